"""The live task page: chart series built on the server (app/web/charts.py), the JSON feeds
and pages of the `live` blueprint (app/web/live.py), on a real SQLite store filled directly
with experiments shaped like the ones the experiment job writes."""
from __future__ import annotations

import json
from contextlib import contextmanager
import random
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers import chromium

T0 = datetime(2026, 1, 1, 12, 0, 0)
STATIC = Path(__file__).resolve().parents[1] / "app" / "web" / "static"


# -- building a task in the store ------------------------------------------------------------

def spec_dict(objective: str = "maximize_throughput", objective_level: float | None = 32, slo: dict | None = None):
    data = {
        "task_name": "live-page",
        "base_runtime": "sim",
        "model": {"id_or_path": "llama-3-8b"},
        "parameters": {"max-running-requests": [16, 32, 64, 128], "schedule-policy": ["lpm", "fcfs"]},
        "optimization": {"strategy": "grid_search", "objective": objective, "max_iterations": 8,
                         "max_parallel_experiments": 4, "timeout_per_iteration": 120},
        "benchmark": {"traffic_scenarios": ["D(64,16)"], "num_concurrency": [8, 32],
                      "max_requests_per_iteration": 6, "max_time_per_iteration": 60},
    }
    if objective_level is not None:
        data["optimization"]["objective_level"] = objective_level
    if slo is not None:
        data["slo"] = slo
    return data


def level(concurrency: int, tput_per_gpu: float, p99_ttft_ms: float, mean_ttft_ms: float = 100.0,
          mean_tpot_ms: float = 10.0, completed: int = 6) -> dict:
    return {
        "concurrency": concurrency, "completed": completed, "errors": 0, "error_kinds": {}, "duration": 2.0,
        "request_throughput": 3.0, "output_throughput": tput_per_gpu, "total_token_throughput": tput_per_gpu * 5,
        "request_throughput_per_gpu": 3.0, "output_throughput_per_gpu": tput_per_gpu,
        "total_token_throughput_per_gpu": tput_per_gpu * 5, "goodput": None, "good_requests": None,
        "mean_ttft_ms": mean_ttft_ms, "median_ttft_ms": mean_ttft_ms, "p99_ttft_ms": p99_ttft_ms,
        "mean_tpot_ms": mean_tpot_ms, "p99_tpot_ms": mean_tpot_ms * 1.5, "mean_itl_ms": mean_tpot_ms,
        "p99_itl_ms": mean_tpot_ms * 2, "mean_e2el_ms": 400.0, "p99_e2el_ms": 900.0,
    }


def metrics_for(tput: float, p99: float, **kw) -> dict:
    """Two levels; the one at concurrency 32 is the scored one (objective_level 32). The
    unscored level has numbers that would change the Pareto front if it were read."""
    return {
        "scenarios": [{"scenario": "D(64,16)", "levels": [level(8, 10_000.0 - tput, 1.0), level(32, tput, p99, **kw)]}],
        "score": {"objective": tput, "slo_ok": True, "penalty": 0.0, "violations": []},
        "simulated": True,
    }


def make_task(spec: dict | None = None, status: str = "running") -> int:
    from app.store.db import session_scope
    from app.store.models import Task
    from app.task_service import create_task
    from app.domain.taskspec import parse_task

    task_id = create_task(parse_task(spec or spec_dict()), enqueue=False)
    with session_scope() as s:
        t = s.get(Task, task_id)
        t.status, t.started_at, t.created_at = status, T0, T0
    return task_id


def add_experiments(task_id: int, rows: list[dict]) -> list[int]:
    """rows: dicts of Experiment columns; seq, times and simulated filled in."""
    from app.store.db import session_scope
    from app.store.models import Experiment

    with session_scope() as s:
        objs = []
        for i, row in enumerate(rows, start=1):
            row = dict(row)
            seq = row.pop("seq", i)
            row.setdefault("params", {"max-running-requests": 16 * (1 + i % 4), "schedule-policy": "lpm" if i % 2 else "fcfs"})
            row.setdefault("state", "succeeded")
            row.setdefault("attempt", 1)
            row.setdefault("started_at", T0 + timedelta(seconds=i))
            if row["state"] not in ("pending", "queued", "running"):
                row.setdefault("finished_at", T0 + timedelta(seconds=10 + i))
            objs.append(Experiment(task_id=task_id, seq=seq, simulated=True, gpus=["vm:0"], host="vm",
                                   worker="gpu-sim@vm", **row))
        s.add_all(objs)
        s.flush()
        return [o.id for o in objs]


def add_gpus(n: int = 4) -> list[int]:
    from app.store.db import session_scope
    from app.store.models import Gpu

    with session_scope() as s:
        gpus = [Gpu(host="vm", index=i, group="sim", worker="gpu-sim@vm", name="Simulated H100-80GB", simulated=True)
                for i in range(n)]
        s.add_all(gpus)
        s.flush()
        return [g.id for g in gpus]


def charts_of(task_id: int) -> dict:
    from app.store.db import session_scope
    from app.store.models import Task
    from app.web.charts import task_charts

    with session_scope(readonly=True) as s:
        return task_charts(s, s.get(Task, task_id))


# -- chart series ----------------------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("objective", ["maximize_throughput", "minimize_ttft"])
def test_objective_series_has_a_running_best_in_the_task_direction(db, objective):
    rng = random.Random(7)
    task_id = make_task(spec_dict(objective=objective))
    rows = []
    for i in range(60):
        kind = i % 10
        state = "failed" if kind == 3 else "timed_out" if kind == 7 else "succeeded"
        row = {"state": state, "objective": None if state != "succeeded" else rng.uniform(1, 100),
               "slo_ok": None if state != "succeeded" else kind != 5,
               # finish order differs from seq order: the series follows the finish time
               "finished_at": T0 + timedelta(seconds=1000 - 10 * i)}
        rows.append(row)
    rows.append({"state": "running"})  # not finished: not in the series
    add_experiments(task_id, rows)

    o = charts_of(task_id)["objective"]
    minimize = objective.startswith("minimize")
    assert o["direction"] == ("minimize" if minimize else "maximize")
    ts = [p["t"] for p in o["points"]]
    assert ts == sorted(ts) and [p["seq"] for p in o["points"]][0] > [p["seq"] for p in o["points"]][-1]
    eligible = [r for r in rows if r["state"] == "succeeded" and r["slo_ok"]]
    assert len(o["points"]) == o["total_points"] == len(eligible)
    # failed, timed out and SLO-ineligible experiments are marks, never points or the best
    assert {m["state"] for m in o["marks"]} == {"failed", "timed_out", "succeeded"}
    assert len(o["marks"]) == 60 - len(eligible)
    assert all(m["slo_ok"] is False for m in o["marks"] if m["state"] == "succeeded")
    best = [b["y"] for b in o["best"]]
    pairs = list(zip(best, best[1:]))
    assert all((b <= a) if minimize else (b >= a) for a, b in pairs)
    expect = (min if minimize else max)(r["objective"] for r in eligible)
    assert best[-1] == pytest.approx(expect, rel=1e-5) and o["best"][-1]["t"] == ts[-1]  # 6 digits sent

    # the running best is exactly the best of the points seen so far
    running, seen = [], None
    for p in o["points"]:
        if seen is None or (p["y"] < seen if minimize else p["y"] > seen):
            seen = p["y"]
            running.append(seen)
    assert best[: len(running)] == running

    # and its last value is the best experiment the reports name
    from app.store.db import session_scope
    from app.store.models import Task
    from app.serializers import best_experiment

    with session_scope(readonly=True) as s:
        assert best_experiment(s, s.get(Task, task_id)).objective == expect
        assert best_experiment(s, s.get(Task, task_id)).seq == o["best"][-1]["seq"]


@pytest.mark.unit
def test_pareto_front_is_exactly_the_non_dominated_points(db):
    from app.web.charts import pareto_front

    # (throughput per GPU, p99 TTFT ms): hand-checked front marked True
    hand = [
        ((100.0, 50.0), True),
        ((90.0, 40.0), True),
        ((80.0, 45.0), False),   # dominated by (90, 40)
        ((120.0, 80.0), True),
        ((120.0, 90.0), False),  # same throughput, slower
        ((60.0, 30.0), True),
        ((60.0, 35.0), False),
        ((50.0, 30.0), False),   # same TTFT as (60, 30), less throughput
        ((110.0, 80.0), False),  # dominated by (120, 80)
        ((95.0, 50.0), False),   # dominated by (100, 50)
    ]
    assert sorted(pareto_front([p for p, _ in hand])) == sorted(i for i, (_, on) in enumerate(hand) if on)
    # duplicates on the front are both kept; against brute force on random sets
    assert pareto_front([(1.0, 1.0), (1.0, 1.0), (0.5, 2.0)]) == [0, 1]
    rng = random.Random(3)
    for _ in range(50):
        pts = [(float(rng.randint(1, 12)), float(rng.randint(1, 12))) for _ in range(rng.randint(1, 30))]
        brute = [i for i, p in enumerate(pts)
                 if not any(q[0] >= p[0] and q[1] <= p[1] and q != p for q in pts)]
        assert sorted(pareto_front(pts)) == brute

    # through the store: points read at the scored level (concurrency 32), front matches
    task_id = make_task()
    rows = [{"objective": x, "slo_ok": True, "metrics": metrics_for(x, y)} for (x, y), _ in hand]
    rows.append({"state": "failed", "objective": None, "metrics": None})
    rows.append({"objective": 5.0, "slo_ok": False, "metrics": metrics_for(5.0, 500.0)})  # plotted, marked
    add_experiments(task_id, rows)
    (sc,) = charts_of(task_id)["pareto"]["scenarios"]
    assert sc["scenario"] == "D(64,16)" and sc["total_points"] == len(hand) + 1
    assert {(p["x"], p["y"]) for p in sc["points"]} == {p for p, _ in hand} | {(5.0, 500.0)}
    assert [(p["x"], p["y"]) for p in sc["front"]] == sorted(p for p, on in hand if on)
    assert [p["slo_ok"] for p in sc["points"] if p["x"] == 5.0] == [False]


@pytest.mark.unit
def test_pareto_reads_the_highest_level_without_objective_level(db):
    task_id = make_task(spec_dict(objective_level=None))
    add_experiments(task_id, [{"objective": 1.0, "slo_ok": True, "metrics": metrics_for(300.0, 70.0)}])
    (sc,) = charts_of(task_id)["pareto"]["scenarios"]
    assert [(p["x"], p["y"]) for p in sc["points"]] == [(300.0, 70.0)]  # concurrency 32 > 8


@pytest.mark.unit
def test_parameter_series_pair_values_with_objectives(db):
    task_id = make_task()
    add_experiments(task_id, [
        {"params": {"max-running-requests": 16, "schedule-policy": "lpm"}, "objective": 1.0, "slo_ok": True},
        {"params": {"max-running-requests": 64, "schedule-policy": "fcfs"}, "objective": 3.0, "slo_ok": False},
        {"params": {"max-running-requests": 32, "schedule-policy": "lpm"}, "state": "failed", "objective": None},
    ])
    params = {p["name"]: p for p in charts_of(task_id)["params"]["params"]}
    mrr, policy = params["max-running-requests"], params["schedule-policy"]
    assert mrr["numeric"] and [(p["x"], p["y"]) for p in mrr["points"]] == [(16, 1.0), (64, 3.0)]
    assert not policy["numeric"] and policy["values"] == ["fcfs", "lpm"]
    assert [(p["x"], p["y"], p["slo_ok"]) for p in policy["points"]] == [("lpm", 1.0, True), ("fcfs", 3.0, False)]


@pytest.mark.unit
def test_gpu_timeline_shows_who_held_which_gpu_when(db):
    from app.store.db import session_scope
    from app.store.models import GpuAllocation

    task_id = make_task()
    other = make_task()
    g0, g1, _, _ = add_gpus()
    e1, e2 = add_experiments(task_id, [{"objective": 1.0, "slo_ok": True}, {"state": "running"}])
    (foreign,) = add_experiments(other, [{"state": "running"}])
    with session_scope() as s:
        s.add_all([
            GpuAllocation(gpu_id=g0, experiment_id=e1, attempt=1, allocated_at=T0 + timedelta(seconds=1),
                          released_at=T0 + timedelta(seconds=11)),
            GpuAllocation(gpu_id=g1, experiment_id=e1, attempt=1, allocated_at=T0 + timedelta(seconds=1),
                          released_at=T0 + timedelta(seconds=11)),
            GpuAllocation(gpu_id=g0, experiment_id=e2, attempt=1, allocated_at=T0 + timedelta(seconds=12)),
            GpuAllocation(gpu_id=g1, experiment_id=foreign, attempt=1, allocated_at=T0 + timedelta(seconds=12)),
        ])
    tl = charts_of(task_id)["timeline"]
    assert tl["gpus"] == ["vm:0", "vm:1"] and tl["total_bars"] == 3
    bars = [(b["gpu"], b["seq"], b["start"], b["end"], b["open"]) for b in tl["bars"]]
    assert bars[:2] == [("vm:0", 1, 1.0, 11.0, False), ("vm:1", 1, 1.0, 11.0, False)]
    gpu, seq, start, end, is_open = bars[2]
    assert (gpu, seq, start, is_open) == ("vm:0", 2, 12.0, True) and end == tl["now"] > 12.0


# -- the JSON feeds --------------------------------------------------------------------------

@pytest.mark.unit
def test_live_feed_pages_the_experiments_table(client):
    task_id = make_task()
    add_experiments(task_id, [
        {"state": "failed" if i % 10 == 0 else "succeeded", "objective": None if i % 10 == 0 else float(i),
         "slo_ok": None if i % 10 == 0 else True, "error": "engine died" if i % 10 == 0 else None,
         "metrics": None if i % 10 == 0 else metrics_for(float(i), 50.0 + i)}
        for i in range(1, 121)
    ])
    body = client.get(f"/api/tasks/{task_id}/live?page=2&per_page=50").json
    page = body["experiments"]
    assert (page["page"], page["per_page"], page["pages"], page["total"]) == (2, 50, 3, 120)
    assert [e["seq"] for e in page["experiments"]] == list(range(51, 101))
    first = page["experiments"][0]
    assert {"id", "seq", "params", "state", "phase", "attempts", "gpus", "host", "worker", "started_at",
            "finished_at", "objective", "slo_ok", "error", "key_metrics"} <= set(first)
    assert first["key_metrics"]["output_throughput_per_gpu"] == 51.0 and first["key_metrics"]["p99_ttft_ms"] == 101.0
    assert "metrics" not in first and "engine_log" not in first

    task = body["task"]
    assert task["id"] == task_id and task["simulated"] is True and task["terminal"] is False
    assert task["counts"]["succeeded"] == 108 and task["counts"]["failed"] == 12 and "experiments" not in task
    assert task["best"]["seq"] == 119 and task["best"]["launch_command_shell"].startswith("python -m sglang.launch_server")
    assert "--max-running-requests" in task["best"]["launch_command"]

    last = client.get(f"/api/tasks/{task_id}/live?page=3&per_page=50").json["experiments"]
    assert [e["seq"] for e in last["experiments"]] == list(range(101, 121))
    failed = client.get(f"/api/tasks/{task_id}/live?state=failed&per_page=5").json["experiments"]
    assert failed["total"] == 12 and [e["seq"] for e in failed["experiments"]] == [10, 20, 30, 40, 50]
    desc = client.get(f"/api/tasks/{task_id}/live?order=desc&per_page=3").json["experiments"]
    assert [e["seq"] for e in desc["experiments"]] == [120, 119, 118]
    # nonsense arguments fall back to sane values; per_page is capped
    odd = client.get(f"/api/tasks/{task_id}/live?page=x&per_page=100000&state=bogus").json["experiments"]
    assert odd["page"] == 1 and odd["per_page"] == 200 and odd["total"] == 120
    for url in (f"/api/tasks/{task_id + 99}/live", f"/api/tasks/{task_id + 99}/charts"):
        resp = client.get(url)
        assert resp.status_code == 404 and resp.json["errors"][0]["msg"]


@pytest.mark.unit
def test_charts_feed_carries_all_four_series(client):
    task_id = make_task(status="completed")
    add_experiments(task_id, [{"objective": 10.0 * i, "slo_ok": True, "metrics": metrics_for(10.0 * i, 100.0 + i)}
                              for i in range(1, 6)])
    resp = client.get(f"/api/tasks/{task_id}/charts")
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    c = resp.json
    assert c["task_id"] == task_id and c["objective_name"] == "maximize_throughput"
    assert [p["y"] for p in c["objective"]["best"]] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert len(c["pareto"]["scenarios"][0]["front"]) == 5  # more throughput for a higher TTFT each time
    assert {p["name"] for p in c["params"]["params"]} == {"max-running-requests", "schedule-policy"}
    assert c["timeline"] == {"gpus": [], "bars": [], "total_bars": 0, "now": c["timeline"]["now"]}


@pytest.mark.unit
def test_a_5000_experiment_task_gets_bounded_responses(client):
    from app.store.db import session_scope
    from app.store.models import GpuAllocation
    from app.web.charts import MAX_POINTS

    n = 5000
    task_id = make_task()
    gpus = add_gpus(8)
    rng = random.Random(11)
    rows = []
    for i in range(1, n + 1):
        if i % 25 == 0:
            rows.append({"state": "failed", "objective": None, "error": "boom"})
            continue
        x, y = rng.uniform(100, 5000), rng.uniform(10, 2000)
        rows.append({"objective": x, "slo_ok": i % 9 != 0, "metrics": metrics_for(x, y),
                     "finished_at": T0 + timedelta(seconds=i)})
    ids = add_experiments(task_id, rows)
    with session_scope() as s:
        s.add_all(GpuAllocation(gpu_id=gpus[k % 8], experiment_id=e, attempt=1, allocated_at=T0 + timedelta(seconds=k),
                                released_at=T0 + timedelta(seconds=k + 8)) for k, e in enumerate(ids))

    resp = client.get(f"/api/tasks/{task_id}/charts")
    c = resp.json
    o = c["objective"]
    assert o["total_points"] + o["total_marks"] == n
    assert len(o["points"]) <= MAX_POINTS and len(o["best"]) <= MAX_POINTS and len(o["marks"]) <= MAX_POINTS
    # thinning keeps every improvement of the best, so the line still ends at the true best
    best = max((r["objective"], i) for i, r in enumerate(rows, start=1) if r.get("slo_ok"))
    assert o["best"][-1]["seq"] == best[1] and o["best"][-1]["y"] == pytest.approx(best[0], rel=1e-5)
    assert any(p["seq"] == best[1] for p in o["points"])
    (sc,) = c["pareto"]["scenarios"]
    assert sc["total_points"] == n - n // 25 and len(sc["points"]) <= MAX_POINTS
    front = {(p["x"], p["y"]) for p in sc["front"]}
    assert front <= {(p["x"], p["y"]) for p in sc["points"]}  # the front survives the thinning
    for p in c["params"]["params"]:
        assert p["total_points"] == n - n // 25 and len(p["points"]) <= MAX_POINTS
    tl = c["timeline"]
    assert tl["total_bars"] == n and len(tl["bars"]) == MAX_POINTS
    assert tl["bars"][-1]["seq"] == n  # the most recent holds are the ones kept
    points = (len(o["points"]) + len(o["best"]) + len(o["marks"]) + len(sc["points"]) + len(sc["front"])
              + sum(len(p["points"]) for p in c["params"]["params"]) + len(tl["bars"]))
    assert points <= 8 * MAX_POINTS
    assert len(resp.data) < 2_500_000

    live = client.get(f"/api/tasks/{task_id}/live").json
    assert live["experiments"]["total"] == n and len(live["experiments"]["experiments"]) == 50
    assert len(json.dumps(live)) < 100_000
    page = client.get(f"/tasks/{task_id}")
    assert page.status_code == 200 and page.data.count(b'class="exp-link"') == 51  # 50 rows + the best
    assert b"page 1 of 100 " in page.data
    # a second poll reads metrics of no experiment again (the per-process cache)
    assert client.get(f"/api/tasks/{task_id}/charts").json["pareto"] == c["pareto"]


# -- the pages -------------------------------------------------------------------------------

@pytest.mark.unit
def test_task_page_renders_server_side_with_the_live_hooks(client):
    task_id = make_task()
    ids = add_experiments(task_id, [
        {"objective": 42.0, "slo_ok": True, "metrics": metrics_for(42.0, 80.0)},
        {"state": "failed", "objective": None, "error": "engine <b>crashed</b>"},
        {"state": "running", "phase": "benchmark"},
    ])
    html = client.get(f"/tasks/{task_id}").data.decode()
    assert re.search(r'id="task-status"[^>]*>running<', html)
    assert 'id="task-live"' in html and f'data-live-url="/api/tasks/{task_id}/live"' in html
    assert f'data-charts-url="/api/tasks/{task_id}/charts"' in html and 'data-terminal="0"' in html
    assert ">simulated<" in html and "simulated engine and GPUs" in html
    assert 'id="best"' in html and 'id="best-command"' in html and 'id="copy-command"' in html
    assert "python -m sglang.launch_server --model-path llama-3-8b" in html
    for eid in ids:
        assert f'<a class="exp-link" href="/experiments/{eid}">' in html
    assert "engine &lt;b&gt;crashed&lt;/b&gt;" in html and "running (benchmark)" in html
    for chart in ("chart-objective", "chart-pareto", "param-charts", "chart-timeline"):
        assert f'id="{chart}"' in html
    assert "vendor/chartjs/chart.umd.min.js" in html and "js/task.js" in html
    assert 'name="csrf_token"' in html and 'id="cancel-form"' in html
    assert 'id="page-info">page 1 of 1 · 3 experiments' in html
    assert 'http-equiv="refresh"' not in html  # the script refreshes, not the whole page

    # page 2 without JS: the prev/next links carry the page and the filter
    more = make_task()
    add_experiments(more, [{"objective": float(i), "slo_ok": True} for i in range(1, 8)])
    html = client.get(f"/tasks/{more}?page=2&per_page=5").data.decode()
    assert re.findall(r'data-seq="(\d+)"', html) == ["6", "7"]
    assert 'id="prev-page" href="?page=1&amp;per_page=5"' in html


@pytest.mark.unit
def test_finished_task_page_has_no_cancel_and_unknown_ids_are_404(client):
    task_id = make_task(status="completed")
    html = client.get(f"/tasks/{task_id}").data.decode()
    assert 'data-terminal="1"' in html and 'id="cancel-form"' not in html and 'id="best-none"' in html
    assert client.get(f"/tasks/{task_id + 1}").status_code == 404
    assert client.get("/experiments/999999").status_code == 404


@pytest.mark.unit
def test_experiment_page_shows_levels_slo_verdicts_command_and_log(client):
    slo = {"ttft": {"threshold": 0.2, "hard_fail": True, "fail_ratio": 0.5}}
    task_id = make_task(spec_dict(slo=slo))
    metrics = metrics_for(500.0, 90.0, mean_ttft_ms=400.0)  # level 32: TTFT 0.4 s, twice the SLO
    metrics["scenarios"][0]["levels"][0].update(mean_ttft_ms=50.0, goodput=2.5, good_requests=5)  # level 8 passes
    (eid,) = add_experiments(task_id, [{
        "objective": None, "slo_ok": False, "metrics": metrics, "engine_log": "INFO ready\nWARN <slow>",
        "error": "SLO ttft violated", "params": {"max-running-requests": 64, "schedule-policy": "fcfs"},
    }])
    resp = client.get(f"/experiments/{eid}")
    assert resp.status_code == 200
    html = resp.data.decode()
    assert f'href="/tasks/{task_id}"' in html and ">simulated<" in html
    assert 'id="levels-1"' in html and "8 users" in html and "32 users" in html
    rows = re.findall(r"<tr class=\"(scored)?\">(.*?)</tr>", html, re.S)
    assert len(rows) == 2
    (unscored, low), (scored, high) = rows
    assert not unscored and "slo-pass" in low and "2.50" in low and "5 good" in low
    assert scored and "slo-fail" in high and "ttft 0.4 s &gt; 0.2 s" in high
    assert ('id="launch-command">python -m sglang.launch_server --model-path llama-3-8b --host 0.0.0.0 --port 30000 '
            "--max-running-requests 64 --schedule-policy fcfs</pre>") in html
    assert "WARN &lt;slow&gt;" in html and 'id="exp-error"' in html and "SLO ttft violated" in html
    assert 'id="attempts"' in html and 'id="params"' in html


@pytest.mark.unit
def test_static_assets_are_served_locally(client):
    for path in ("/static/vendor/chartjs/chart.umd.min.js", "/static/js/task.js"):
        resp = client.get(path)
        assert resp.status_code == 200 and len(resp.data) > 1000
        resp.close()
    assert (STATIC / "vendor" / "chartjs" / "LICENSE.md").read_text().startswith("The MIT License")
    assert b"Chart.js v4" in (STATIC / "vendor" / "chartjs" / "chart.umd.min.js").read_bytes()[:200]
    # no CDN at run time
    for name in ("task.html", "experiment.html"):
        assert "http" not in re.sub(r'http-equiv|https?://www\.chartjs\.org', "", (STATIC.parent / "templates" / name).read_text())


# -- optional: the script in a real browser --------------------------------------------------

@contextmanager
def task_page(flask_app, task_id: int, **context):
    """The app served on a free port and a headless Chromium page on the task's page; yields
    (page, errors seen: uncaught page errors, console errors, failed requests). `context`:
    Playwright context options."""
    import threading

    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, flask_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    errors: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_context(**context).new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text)
                    if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                    if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
            page.goto(f"http://127.0.0.1:{server.server_port}/tasks/{task_id}")
            yield page, errors
            browser.close()
    finally:
        server.shutdown()
        thread.join(timeout=5)


@pytest.mark.process
@pytest.mark.skipif(chromium() is None, reason="needs the playwright package and a chromium binary")
def test_task_page_script_draws_the_charts_in_a_browser(flask_app):
    """The page in headless Chromium: task.js polls, draws the four charts, pages the table."""
    from playwright.sync_api import expect

    from app.store.db import session_scope
    from app.store.models import GpuAllocation

    task_id = make_task()
    (g0,) = add_gpus(1)
    ids = add_experiments(task_id, [{"objective": float(i), "slo_ok": i != 3, "metrics": metrics_for(float(i), 90.0 - i)}
                                    for i in range(1, 61)] + [{"state": "failed", "objective": None}])
    with session_scope() as s:
        s.add(GpuAllocation(gpu_id=g0, experiment_id=ids[0], attempt=1, allocated_at=T0, released_at=T0 + timedelta(seconds=5)))
    with task_page(flask_app, task_id) as (page, errors):
        expect(page.locator("#param-charts canvas")).to_have_count(2, timeout=15000)  # no eval under the CSP
        drawn = page.evaluate("""() => ['chart-objective', 'chart-pareto', 'chart-timeline']
            .map(id => { const c = Chart.getChart(id); return c ? c.data.datasets.reduce((n, d) => n + d.data.length, 0) : -1; })""")
        assert drawn[0] >= 60 and drawn[1] > 0 and drawn[2] == 1, drawn
        assert page.text_content("#task-status") == "running"
        assert page.text_content("#live-indicator") == "live"
        page.click("#next-page")
        expect(page.locator("#experiments-body tr").first).to_have_attribute("data-seq", "51", timeout=10000)
        assert page.text_content("#page-info").startswith("page 2 of 2")
    assert not errors, errors


# -- objectives with their units, measured figures --------------------------------------------

def spec_for(objective: str) -> dict:
    """A task with `objective` and what its figure needs (SLOs, a GPU price, rate bounds)."""
    from app.domain.objectives import OBJECTIVES

    needs = OBJECTIVES[objective].needs
    data = spec_dict(objective, objective_level=None if needs == "rate_search" else 32,
                     slo={"ttft": {"threshold": 1.0}} if needs in ("slo", "rate_search") else None)
    if needs == "price":
        data["optimization"]["gpu_price_per_hour"] = 2.5
    if needs == "rate_search":
        data["benchmark"]["rate_search"] = {"low": 1, "high": 64}
    return data


@pytest.mark.unit
@pytest.mark.parametrize("objective", sorted(__import__("app.domain.objectives", fromlist=["OBJECTIVES"]).OBJECTIVES))
def test_every_objective_has_its_unit_wherever_it_is_shown(client, objective):
    """Task page, task list, experiment page, JSON API, charts feed, CSV export, the CLI's
    summary and its task list: the figure always comes with its unit."""
    from click.testing import CliRunner

    from app import cli, console
    from app.domain.objectives import OBJECTIVES

    o = OBJECTIVES[objective]
    task_id = make_task(spec_for(objective))
    (exp_id,) = add_experiments(task_id, [{"objective": 1.2345, "measured": {objective: 1.2345}, "penalty": 0.0,
                                           "slo_ok": True, "metrics": metrics_for(1.2345, 50.0)}])
    shown, titled = f"1.234 {o.unit}", f"{o.label} ({o.unit})"
    page = client.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert titled in page and shown in page
    assert shown in client.get("/").get_data(as_text=True)
    assert shown in client.get(f"/experiments/{exp_id}").get_data(as_text=True)
    api = client.get(f"/api/tasks/{task_id}").json
    assert api["objective_unit"] == o.unit and api["objectives"] == [
        {"name": objective, "unit": o.unit, "label": o.label, "direction": o.direction}]
    assert api["best"]["value"] == 1.2345
    charts = client.get(f"/api/tasks/{task_id}/charts").json
    assert charts["objective_unit"] == charts["objective"]["unit"] == charts["params"]["unit"] == o.unit
    header = client.get(f"/tasks/{task_id}/export.csv").get_data(as_text=True).splitlines()[0]
    assert f"{objective} ({o.unit})" in header
    with console.err.capture() as captured:
        console.print_summary(console.load_report(task_id))
    assert shown in captured.get()
    listed = CliRunner().invoke(cli.main, ["status"])
    assert listed.exit_code == 0 and shown in listed.output


@pytest.mark.unit
def test_charts_plot_measured_figures_and_mark_slo_breaking_points(db):
    """The quickstart's case: a TTFT of 8.7 s that broke the SLO is plotted at 8.7 s (marked,
    its penalised score of 9,955 shown as the score), not on the axis of the best's 4.94 s."""
    task_id = make_task(spec_dict("minimize_ttft", slo={"tpot": {"threshold": 0.03}}))
    add_experiments(task_id, [
        {"objective": 4.94, "measured": {"minimize_ttft": 4.94}, "penalty": 0.0, "slo_ok": True},
        {"objective": 9955.0, "measured": {"minimize_ttft": 8.7}, "penalty": 1143.3, "slo_ok": True},
        {"objective": 1567.0, "measured": {"minimize_ttft": 3.1}, "penalty": 504.5, "slo_ok": False},
        {"objective": 6.0, "slo_ok": True},  # stored before measured figures were kept: its score is its figure
    ])
    o = charts_of(task_id)["objective"]
    assert o["unit"] == "s"
    by_seq = {p["seq"]: p for p in o["points"]}
    assert (by_seq[1]["y"], by_seq[1]["slo"]) == (4.94, "met")
    assert (by_seq[2]["y"], by_seq[2]["score"], by_seq[2]["slo"]) == (8.7, 9955.0, "penalised")
    assert by_seq[4]["y"] == 6.0
    (mark,) = o["marks"]
    assert (mark["seq"], mark["y"], mark["slo"]) == (3, 3.1, "broken")
    assert [b["y"] for b in o["best"]] == [4.94, 4.94]  # the penalty ranks: 8.7 s never led
    params = charts_of(task_id)["params"]["params"][0]["points"]
    assert sorted((p["y"], p["slo"]) for p in params) == [(3.1, "broken"), (4.94, "met"), (6.0, "met"),
                                                          (8.7, "penalised")]


@pytest.mark.process
@pytest.mark.skipif(chromium() is None, reason="needs the playwright package and a chromium binary")
def test_best_launch_command_wraps_beside_its_copy_button_at_1360_px(flask_app, tmp_path):
    """A long launch command stays inside its box at 1,360 px: it wraps instead of running
    on under the Copy button (a screenshot is left in the test's temporary folder)."""
    data = spec_dict()
    data["parameters"] = {f"{name}": [value] for name, value in (
        ("max-running-requests", 256), ("schedule-policy", "lpm"), ("chunked-prefill-size", 16384),
        ("mem-fraction-static", 0.88), ("max-prefill-tokens", 32768), ("schedule-conservativeness", 0.7),
        ("cuda-graph-max-bs", 256), ("num-continuous-decode-steps", 4), ("stream-interval", 8))}
    data["parameters"]["max-running-requests"] = [16, 256]
    task_id = make_task(data)
    add_experiments(task_id, [{"objective": 900.0, "measured": {"maximize_throughput": 900.0}, "slo_ok": True,
                               "params": {**{k: v[0] for k, v in data["parameters"].items()}},
                               "metrics": metrics_for(900.0, 50.0)}])
    with task_page(flask_app, task_id, viewport={"width": 1360, "height": 900}) as (page, _):
        page.wait_for_function("() => document.querySelector('#best-command') && typeof Chart !== 'undefined'")
        box = page.evaluate("""() => {
            const pre = document.getElementById('best-command'), btn = document.getElementById('copy-command');
            const p = pre.getBoundingClientRect(), b = btn.getBoundingClientRect();
            return {preRight: p.right, buttonLeft: b.left, scroll: pre.scrollWidth, client: pre.clientWidth,
                    lines: Math.round(p.height / parseFloat(getComputedStyle(pre).lineHeight || 16)),
                    text: pre.textContent, page: document.documentElement.scrollWidth};
        }""")
        page.locator("#best-section").screenshot(path=str(tmp_path / "best-command.png"))
    assert box["preRight"] <= box["buttonLeft"], box
    assert box["scroll"] <= box["client"] and box["page"] <= 1360, box
    assert "--stream-interval 8" in box["text"]  # wrapped, not cut: the whole command is there


# -- a multi-objective task's Pareto set ------------------------------------------------------

MO = ["maximize_throughput", "minimize_p99_ttft"]


def mo_task(reference_point: list[float] | None = None) -> int:
    data = spec_dict()
    data["optimization"].update(strategy="bayesian", objectives=MO)
    data["optimization"].pop("objective", None)
    if reference_point is not None:
        data["optimization"]["reference_point"] = reference_point
    data["slo"] = {"tpot": {"threshold": 0.05}}
    task_id = make_task(data)
    # (throughput tok/s/GPU, p99 TTFT s, penalty, slo_ok): 1-3 the front; 4 dominated by 2;
    # 5 beats all on both but broke a soft SLO; 6 broke a hard one
    rows = [(900.0, 3.0, 0.0, True), (600.0, 1.0, 0.0, True), (300.0, 0.5, 0.0, True), (500.0, 2.0, 0.0, True),
            (1000.0, 0.2, 2.0, True), (2000.0, 0.1, 9.0, False)]
    add_experiments(task_id, [{"objective": tput / (1 + pen), "penalty": pen, "slo_ok": ok,
                               "measured": {MO[0]: tput, MO[1]: ttft}, "metrics": metrics_for(tput, ttft * 1000)}
                              for tput, ttft, pen, ok in rows])
    return task_id


@pytest.mark.unit
def test_api_returns_the_pareto_set_with_its_hypervolume_against_the_stated_reference(client):
    from app.domain.pareto import hypervolume

    task_id = mo_task(reference_point=[100.0, 5.0])
    body = client.get(f"/api/tasks/{task_id}").json
    ps = body["pareto_set"]
    assert [o["unit"] for o in ps["objectives"]] == ["tok/s/GPU", "s"]
    assert [p["seq"] for p in ps["points"]] == [3, 2, 1] and ps["candidates"] == 4  # SLO-breaking ones are not candidates
    assert [p["values"] for p in ps["points"]] == [[300.0, 0.5], [600.0, 1.0], [900.0, 3.0]]
    assert ps["reference_point"] == [100.0, 5.0] and ps["reference_given"] is True
    assert ps["hypervolume"] == pytest.approx(hypervolume([(900, 3), (600, 1), (300, 0.5)], ["maximize", "minimize"],
                                                          (100, 5)))
    assert ps["points"][0]["launch_command"][:3] == ["python", "-m", "sglang.launch_server"]
    assert body["objectives"][1] == {"name": "minimize_p99_ttft", "unit": "s", "label": "minimize p99 TTFT",
                                     "direction": "minimize"}
    front = client.get(f"/api/tasks/{task_id}/charts").json["front"]
    assert sorted(p["seq"] for p in front["points"] if p["front"]) == [1, 2, 3]
    assert sorted(p["seq"] for p in front["points"]) == [1, 2, 3, 4]
    default = client.get(f"/api/tasks/{mo_task()}").json["pareto_set"]
    assert default["reference_given"] is False and default["reference_point"] == pytest.approx([270.0, 3.3])
    assert "pareto_set" not in client.get(f"/api/tasks/{make_task()}").json  # single objective: as before


@pytest.mark.unit
def test_cli_json_carries_the_pareto_set(db):
    from click.testing import CliRunner

    from app import cli

    task_id = mo_task()
    result = CliRunner().invoke(cli.main, ["status", str(task_id), "--json"])
    assert result.exit_code == 0
    assert [p["seq"] for p in json.loads(result.output)["pareto_set"]["points"]] == [3, 2, 1]


@pytest.mark.process
@pytest.mark.skipif(chromium() is None, reason="needs the playwright package and a chromium binary")
def test_task_page_lets_a_user_pick_a_front_point_and_copy_its_command(flask_app):
    """In Chromium: the front is drawn, picking a row or a point on the chart shows that
    configuration's launch command beside the Copy button."""
    from playwright.sync_api import expect

    task_id = mo_task()
    with task_page(flask_app, task_id, viewport={"width": 1360, "height": 1000}) as (page, errors):
        page.wait_for_function("() => typeof Chart !== 'undefined' && Chart.getChart('chart-front')")
        drawn = page.evaluate("() => Chart.getChart('chart-front').data.datasets.map(d => d.data.length)")
        assert drawn == [3, 1]
        expect(page.locator("#pareto-body tr")).to_have_count(3)
        first = page.text_content("#pareto-command")
        page.locator("#pareto-body tr").nth(2).locator("input").check()
        expect(page.locator("#pareto-body tr.picked")).to_have_attribute("data-id", page.locator(
            "#pareto-body tr").nth(2).get_attribute("data-id"))
        third = page.text_content("#pareto-command")
        assert third != first and third.startswith("python -m sglang.launch_server")
        # a click on the chart's first front point picks it again
        page.locator("#chart-front").scroll_into_view_if_needed()
        x, y = page.evaluate("""() => { const c = Chart.getChart('chart-front'); const p = c.getDatasetMeta(0).data[0];
            const r = c.canvas.getBoundingClientRect(); return [r.left + p.x, r.top + p.y]; }""")
        page.mouse.click(x, y)
        expect(page.locator("#pareto-command")).to_have_text(first)
    assert not errors, errors


def tie_task() -> int:
    """A finished task whose top two configurations' repeats overlap (#1: 1.00, 1.10, 1.05 s;
    #2: 1.08, 1.20, 1.15 s): #2's best run beats #1's worst."""
    data = spec_dict("minimize_ttft")
    data["optimization"]["repeats"] = 2
    task_id = make_task(data, status="completed")
    a, b = {"max-running-requests": 32, "schedule-policy": "lpm"}, {"max-running-requests": 64, "schedule-policy": "lpm"}
    rows = [{"params": a, "objective": 1.00}, {"params": b, "objective": 1.08}]
    first, second = add_experiments(task_id, [dict(r, measured={"minimize_ttft": r["objective"]}, penalty=0.0, slo_ok=True)
                                              for r in rows])
    add_experiments(task_id, [
        {"seq": 3 + i, "params": p, "objective": f, "measured": {"minimize_ttft": f}, "penalty": 0.0, "slo_ok": True,
         "repeat_of": origin, "seed": seed}
        for i, (p, f, origin, seed) in enumerate([(a, 1.10, first, 1), (a, 1.05, first, 2),
                                                  (b, 1.20, second, 1), (b, 1.15, second, 2)])])
    return task_id


@pytest.mark.unit
def test_a_tie_is_shown_as_a_tie_with_both_launch_commands(client):
    """Repeats whose runs overlap: the page, the API and the CLI say "tie" and give both
    launch commands, with each configuration's mean, spread and figure to rely on."""
    from app import console

    task_id = tie_task()
    a, b = {"max-running-requests": 32, "schedule-policy": "lpm"}, {"max-running-requests": 64, "schedule-policy": "lpm"}
    v = client.get(f"/api/tasks/{task_id}").json["repeats"]
    assert v["tie"] is True and v["winner"]["params"] == a and v["runner_up"]["params"] == b
    assert [t["params"] for t in v["tied"]] == [b]
    assert v["winner"]["relied"] == 1.10 and v["runner_up"]["relied"] == 1.20  # the worst run of each
    assert [len(c["runs"]) for c in v["configurations"]] == [3, 3]
    page = client.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert "<strong>Tie</strong>: #1 and #2" in page
    assert "--max-running-requests 32" in page and "--max-running-requests 64" in page
    assert 'data-copy="verdict-command-1"' in page and 'data-copy="verdict-command-2"' in page
    assert "To rely on (s)" in page
    with console.err.capture() as captured:
        console.print_summary(console.load_report(task_id))
    out = captured.get()
    assert "Tie" in out and "--max-running-requests 32" in out and "--max-running-requests 64" in out


@pytest.mark.process
@pytest.mark.skipif(chromium() is None, reason="needs the playwright package and a chromium binary")
def test_task_page_script_shows_the_tie_and_copies_either_command(flask_app):
    from playwright.sync_api import expect

    task_id = tie_task()
    with task_page(flask_app, task_id, viewport={"width": 1360, "height": 900},
                   permissions=["clipboard-read", "clipboard-write"]) as (page, errors):
        page.wait_for_function("() => typeof Chart !== 'undefined' && Chart.getChart('chart-objective')")
        expect(page.locator("#verdict")).to_contain_text("Tie: #1 and #2")
        expect(page.locator("#verdict-section button[data-copy]")).to_have_count(2)
        assert "--max-running-requests 64" in page.text_content("#verdict-command-2")
        page.click("#verdict-section button[data-copy='verdict-command-2']")
        page.wait_for_function("""async () => (await navigator.clipboard.readText())
            .includes('--max-running-requests 64')""")  # 127.0.0.1 is a secure context: the clipboard API
    assert not errors, errors


@pytest.mark.unit
def test_which_flags_mattered_is_on_the_page_and_in_the_api(client, caplog):
    """Throughput that follows --max-running-requests and not --schedule-policy: the first
    gets (nearly) all the importance, in the API and on the page; before four measured
    experiments there is a note instead of figures. Reading it logs nothing of Optuna's
    (a study per reading would print a line in `autotuner run`'s terminal)."""
    import optuna
    task_id = make_task()
    few = client.get(f"/api/tasks/{task_id}").json["importance"]
    assert few["objectives"] == [] and "at least 4" in few["note"]
    rows = []
    for i in range(16):
        mrr, policy = [16, 32, 64, 128][i % 4], ["lpm", "fcfs"][(i // 4) % 2]
        tput = 10.0 * mrr + (i % 3)
        rows.append({"params": {"max-running-requests": mrr, "schedule-policy": policy}, "objective": tput,
                     "measured": {"maximize_throughput": tput}, "penalty": 0.0, "slo_ok": True,
                     "metrics": metrics_for(tput, 50.0)})
    add_experiments(task_id, rows)
    optuna.logging.enable_propagation()  # Optuna's own handler does not reach caplog
    try:
        with caplog.at_level("INFO", logger="optuna"):
            imp = client.get(f"/api/tasks/{task_id}").json["importance"]
    finally:
        optuna.logging.disable_propagation()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("optuna")] == []
    assert imp["method"] == "PED-ANOVA (Optuna)" and imp["experiments"] == 16
    (o,) = imp["objectives"]
    assert o["unit"] == "tok/s/GPU"
    shares = {p["name"]: p["importance"] for p in o["params"]}
    assert shares["max-running-requests"] > 0.8 > shares["schedule-policy"]
    page = client.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert "Which flags mattered" in page and "<code>--max-running-requests</code>" in page
    assert "Share for maximize throughput per GPU (tok/s/GPU)" in page
