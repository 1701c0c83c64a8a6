"""Scheduling at the physical limit: four workloads through the public API on the embedded
stack (real Redis, real Celery processes, simulated engines whose start-up sets each
experiment's length), measured from the store.

    python benchmarks/scheduling.py [--database-url URL] [--only NAME[,NAME]] [--seed 1] [--json]

Workloads (the `list` strategy runs exactly the experiments given):

- uniform: 20 experiments of ~2 s on 4 GPUs, then the same one at a time (speedup);
- heterogeneous: 48 experiments needing 1, 2, 4 or 8 of 8 GPUs, lognormal lengths (median 3 s);
- starvation: on 8 GPUs, four 1-GPU experiments of ~4 s, then one 8-GPU experiment, then a
  stream of 40 short 1-GPU ones; reports when the 8-GPU one started against strict FIFO's
  start (the end of the four before it);
- priorities: three tasks of 16 1-GPU experiments (~2 s), priorities 0, 5 and 10, submitted at
  once on 8 GPUs; reports when each task's experiments ran.

Each workload runs on a fresh stack whose worker has first run two rounds of short warm-up
experiments (one per GPU each, not measured): a pool process's first experiment starts its fork
server, which imports the simulator once for the process's lifetime; measured cold, a workload's
first rounds would time those imports (four at once on 2 cores), not the scheduling.

Per workload: makespan (first submission to last end) ÷ the lower bound computed on the
*measured* lengths (max(GPU-seconds ÷ GPUs, the longest experiment)), GPU utilisation, and
the hand-over gap: for each experiment that was waiting when its GPUs became free, the time
from the last of them being freed to its claim on the worker, split into placement (freed →
queued) and delivery (queued → claimed). Median and p95. Delivery is split further with the
Celery events the stack sends for Flower, captured from its broker during the run: queued →
sent (the rest of the placing transaction, its commit and the publish), sent → received
(broker to the worker's main process), received → started (handed to a pool process) and
started → claimed (the claim's transaction).
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import statistics
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import percentile, private_home  # noqa: E402

TIME_SCALE = 0.1  # simulated start-up seconds per wall second: see cgbs_for()
WARM_UP_S = 0.8  # each warm-up experiment's length (two rounds of them before a workload)


def cgbs_for(seconds: float, gpus: int) -> int:
    """The simulated engine's start-up is (5 + weights-per-GPU/10 GB + 0.005 × CUDA-graph batch
    size) simulated seconds (app/tools/simengine/model.py); llama-3-8b's weights are 16 GB.
    The CUDA-graph batch size that makes an experiment last about `seconds` of wall time."""
    return max(1, round((seconds / TIME_SCALE - 5.0 - 1.6 / gpus) / 0.005))


def task(name: str, experiments: list[tuple[int, float]], parallel: int, priority: int = 0) -> dict:
    """experiments: (GPUs, wall seconds) each."""
    return {
        "task_name": name, "base_runtime": "sim", "model": {"id_or_path": "llama-3-8b"},
        "sim": {"time_scale": TIME_SCALE}, "parameters": {},
        "optimization": {
            "strategy": "list", "objective": "minimize_latency", "max_parallel_experiments": parallel,
            "priority": priority, "timeout_per_iteration": 300,
            "configs": [{"tp-size": g, "cuda-graph-max-bs": cgbs_for(s, g)} for g, s in experiments],
        },
        "benchmark": {"traffic_scenarios": ["D(16,4)"], "num_concurrency": [1], "max_requests_per_iteration": 1,
                      "max_time_per_iteration": 60},
    }


def post(base: str, data: dict) -> int:
    req = urllib.request.Request(base + "/api/tasks", data=json.dumps(data).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["id"]


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.rstrip("Z")).timestamp() if value else None


class JobEvents:
    """When each experiment job was sent, received by its worker and started in a pool process,
    from the Celery events the stack sends (for Flower), captured in a thread during a run."""

    KINDS = ("task-sent", "task-received", "task-started")

    def __init__(self, broker_url: str) -> None:
        from app.celery_app import RUN_EXPERIMENT, app

        self.job_name = RUN_EXPERIMENT
        self.by_uuid: dict[str, dict] = {}
        self.connection = app.connection_for_read(broker_url)
        self.receiver = app.events.Receiver(self.connection, handlers={k: self._on for k in self.KINDS})
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._capture, daemon=True)

    def _capture(self) -> None:
        for _ in self.receiver.itercapture(limit=None, timeout=None, wakeup=False):
            self.ready.set()  # consuming: every event from now on is seen

    def _on(self, event: dict) -> None:
        self.by_uuid.setdefault(event["uuid"], {})[event["type"]] = event

    def start(self) -> "JobEvents":
        self.thread.start()
        if not self.ready.wait(30):
            raise SystemExit("could not consume the stack's Celery events")
        return self

    def stop(self) -> dict[tuple[int, int], dict[str, float]]:
        """Per (experiment, attempt): the time of each event."""
        self.receiver.should_stop = True
        self.connection.release()
        out: dict[tuple[int, int], dict[str, float]] = {}
        for events in list(self.by_uuid.values()):
            named = [e for e in events.values() if e.get("name") == self.job_name and e.get("args")]
            if named:
                exp_id, attempt = ast.literal_eval(named[0]["args"])
                out[(exp_id, attempt)] = {kind: e["timestamp"] for kind, e in events.items()}
        return out


def run_workload(home: Path, gpus: int, tasks: list[dict]) -> dict:
    """Start a stack of `gpus` simulated GPUs, submit `tasks` at once, wait, read the store."""
    from sqlalchemy import select

    from app.console import load_report
    from app.domain.states import TASK_TERMINAL
    from app.processes import free_port
    from app.stack import Stack
    from app.store.db import session_scope
    from app.store.models import Task, Worker

    port = free_port()
    os.environ.pop("CELERY_BROKER_URL", None)  # a stack of its own, with its own Redis
    stack = Stack(home=home, simulated_gpus=gpus, web_port=port).start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=2).read()
                with session_scope() as s:
                    if s.execute(select(Worker).where(Worker.online.is_(True))).first():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the stack did not come up; see {home / 'logs'}")
            time.sleep(0.2)

        def wait_for(ids: list[int]) -> None:
            while True:
                _, give_up = stack.supervise()
                if give_up:
                    raise SystemExit(give_up)
                with session_scope() as s:
                    if all(st in TASK_TERMINAL for st in s.execute(select(Task.status).where(Task.id.in_(ids))).scalars()):
                        return
                time.sleep(0.5)

        # Warm the worker's pool processes first: each one's first experiment imports the
        # simulator into its fork server (~0.3 CPU-s, once per process lifetime), and a fresh
        # stack's first rounds would otherwise measure four of those at once on 2 cores.
        wait_for([post(base, task("warm-up", [(1, WARM_UP_S)] * (2 * gpus), gpus))])
        events = JobEvents(stack.broker_url).start()
        submitted = time.time()
        ids = [post(base, t) for t in tasks]
        wait_for(ids)
        reports = [load_report(i) for i in ids]
        jobs = events.stop()
    finally:
        stack.stop()
    return {"gpus": gpus, "submitted": submitted, "reports": reports, "jobs": jobs}


DELIVERY_STEPS = [("commit_and_send", "queued", "task-sent"), ("broker", "task-sent", "task-received"),
                  ("to_pool", "task-received", "task-started"), ("claim", "task-started", "claimed")]


def measure(run: dict) -> dict:
    gpus, t0 = run["gpus"], run["submitted"]
    exps = [e for r in run["reports"] for e in r["experiments"]]
    bad = [e for e in exps if e["state"] != "succeeded"]
    if bad:
        raise SystemExit(f"{len(bad)} experiments did not succeed: {bad[0]['state']} {bad[0]['error']}")
    runs = []  # (start, end, gpu labels, experiment)
    for e in exps:
        att = e["attempt_history"][-1]
        runs.append((ts(att["started_at"]), ts(att["finished_at"]), att["gpus"], e))
    lengths = [end - start for start, end, _, _ in runs]
    gpu_seconds = sum((end - start) * len(labels) for start, end, labels, _ in runs)
    makespan = max(end for _, end, _, _ in runs) - t0
    bound = max(gpu_seconds / gpus, max(lengths))
    gaps, placement, delivery = [], [], []
    steps: dict[str, list[float]] = {step: [] for step, _, _ in DELIVERY_STEPS}
    freed_at: dict[str, float] = {}
    for start, end, labels, e in sorted(runs, key=lambda r: r[0]):
        previous = [freed_at[g] for g in labels if g in freed_at]
        if len(previous) == len(labels):  # every GPU it got had run something before
            free = max(previous)
            queued = ts(e["attempt_history"][-1]["queued_at"])
            if queued >= free:  # it was placed after its GPUs freed: a hand-over
                gaps.append(start - free)
                placement.append(queued - free)
                delivery.append(start - queued)
                moments = {"queued": queued, "claimed": start,
                           **run["jobs"].get((e["id"], e["attempt_history"][-1]["number"]), {})}
                for step, since, until in DELIVERY_STEPS:
                    if since in moments and until in moments:
                        steps[step].append(moments[until] - moments[since])
        for g in labels:
            freed_at[g] = end
    ms = lambda xs, q: None if not xs else round(percentile(xs, q) * 1000, 1)  # noqa: E731
    return {
        "experiments": len(exps), "gpus": gpus, "makespan_s": round(makespan, 2), "lower_bound_s": round(bound, 2),
        "ratio": round(makespan / bound, 3), "utilisation": round(gpu_seconds / (gpus * makespan), 3),
        "mean_length_s": round(statistics.mean(lengths), 2),
        "handover_ms": {"n": len(gaps), "median": ms(gaps, 0.5), "p95": ms(gaps, 0.95),
                        "placement_median": ms(placement, 0.5), "delivery_median": ms(delivery, 0.5),
                        "delivery_steps_median": {step: ms(xs, 0.5) for step, xs in steps.items()}},
        "runs": runs,
    }


def uniform(home: Path, rng: random.Random) -> dict:
    parallel = measure(run_workload(home / "u4", 4, [task("uniform", [(1, 2.0)] * 20, 4)]))
    serial = measure(run_workload(home / "u1", 4, [task("uniform-serial", [(1, 2.0)] * 20, 1)]))
    parallel["speedup"] = round(serial["makespan_s"] / parallel["makespan_s"], 2)
    parallel["serial_makespan_s"] = serial["makespan_s"]
    return parallel


def heterogeneous_experiments(rng: random.Random) -> list[tuple[int, float]]:
    """48 experiments needing 1, 2, 4 or 8 GPUs, lognormal lengths (median 3 s): (GPUs, seconds)."""
    return [(rng.choice([1, 1, 2, 2, 4, 8]), min(12.0, max(1.0, math.exp(rng.gauss(math.log(3.0), 0.6)))))
            for _ in range(48)]


def heterogeneous(home: Path, rng: random.Random) -> dict:
    exps = heterogeneous_experiments(rng)
    return measure(run_workload(home / "het", 8, [task("heterogeneous", exps, 8)]))


def starvation(home: Path, rng: random.Random) -> dict:
    exps = [(1, 4.0)] * 4 + [(8, 3.0)] + [(1, 1.0)] * 40
    result = measure(run_workload(home / "starve", 8, [task("starvation", exps, 8)]))
    runs = sorted(result["runs"], key=lambda r: r[3]["seq"])
    fifo_start = max(end for _, end, _, _ in runs[:4])  # strict FIFO starts it when the four end
    big_start = runs[4][0]
    t0 = min(ts(r[3]["attempt_history"][-1]["queued_at"]) for r in runs)
    result["big_start_s"] = round(big_start - t0, 2)
    result["fifo_start_s"] = round(fifo_start - t0, 2)
    result["big_vs_fifo"] = round((big_start - t0) / (fifo_start - t0), 3)
    return result


def priorities(home: Path, rng: random.Random) -> dict:
    tasks = [task(f"priority-{p}", [(1, 2.0)] * 16, 8, priority=p) for p in (0, 5, 10)]
    run = run_workload(home / "prio", 8, tasks)
    priority = {r["id"]: r["priority"] for r in run["reports"]}
    result = measure(run)
    t0 = min(r[0] for r in result["runs"])
    by_task: dict[int, list] = {}
    for start, end, _, e in result["runs"]:
        by_task.setdefault(priority[e["task_id"]], []).append((start - t0, end - t0))
    result["tasks"] = [{"priority": p, "first_start_s": round(min(s for s, _ in v), 2),
                        "median_start_s": round(statistics.median(s for s, _ in v), 2),
                        "last_end_s": round(max(e for _, e in v), 2)} for p, v in sorted(by_task.items(), reverse=True)]
    return result


WORKLOADS = {"uniform": uniform, "heterogeneous": heterogeneous, "starvation": starvation, "priorities": priorities}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None, help="an empty PostgreSQL database (default: SQLite)")
    parser.add_argument("--only", default=",".join(WORKLOADS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = private_home("sched", args.database_url, AUTOTUNER_TICK_INTERVAL="1")
    from app.store.migrate import upgrade

    upgrade()
    rng = random.Random(args.seed)
    results = {}
    for name in args.only.split(","):
        results[name] = WORKLOADS[name](home, rng)
        results[name].pop("runs")
        print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    out = {"database": "postgresql" if args.database_url else "sqlite", "cpus": os.cpu_count(), "workloads": results}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['database']}, {os.cpu_count()} CPUs shared by everything")
    print(f"{'workload':<14}{'exps':>5}{'GPUs':>5}{'makespan':>10}{'bound':>8}{'ratio':>7}{'util':>6}"
          f"{'gap med/p95 ms':>16}{'place/deliver':>15}")
    for name, r in results.items():
        h = r["handover_ms"]
        print(f"{name:<14}{r['experiments']:>5}{r['gpus']:>5}{r['makespan_s']:>9.1f}s{r['lower_bound_s']:>7.1f}s"
              f"{r['ratio']:>7.3f}{r['utilisation']:>6.2f}{str(h['median']) + ' / ' + str(h['p95']):>16}"
              f"{str(h['placement_median']) + ' / ' + str(h['delivery_median']):>15}")
    if "uniform" in results:
        print(f"uniform speedup over one at a time: {results['uniform']['speedup']}x "
              f"({results['uniform']['serial_makespan_s']} s serial)")
    if "starvation" in results:
        r = results["starvation"]
        print(f"starvation: the 8-GPU experiment started at {r['big_start_s']} s; strict FIFO: {r['fifo_start_s']} s "
              f"({r['big_vs_fifo']}x)")
    if "priorities" in results:
        for t in results["priorities"]["tasks"]:
            print(f"priorities: priority {t['priority']:>2}: first start {t['first_start_s']} s, median start "
                  f"{t['median_start_s']} s, last end {t['last_end_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
