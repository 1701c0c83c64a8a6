"""Web latency under load: the embedded stack with the production web server (gunicorn),
several simulated tasks running at once, and pollers reading what a dashboard reads.

    python benchmarks/web_under_load.py [--tasks 5] [--experiments 20] [--pollers 10]
                                        [--pause 2] [--gpus 8] [--database-url URL] [--json]

Each poller reads the task list (`GET /api/tasks`), a task's live view
(`GET /api/tasks/<id>/live`), the index page (`GET /`) and a task page (`GET /tasks/<id>`),
then pauses `--pause` seconds (2 s: the live page's own polling period; 0: a closed-loop
stress with a request always in flight per poller), while the tasks run, and records every
request's latency. Reports, per endpoint, requests,
errors (non-200) and latency p50 / p95 / max, measured from the pollers (same machine: the
pollers, the web server, the coordinator, the worker and its simulated engines share its
cores, which the report lists).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import percentile, private_home  # noqa: E402

ENDPOINTS = ("/api/tasks", "/api/tasks/{id}/live", "/", "/tasks/{id}")


def task_data(name: str, experiments: int, parallel: int) -> dict:
    return {
        "task_name": name, "base_runtime": "sim", "model": {"id_or_path": "llama-3-8b"},
        "sim": {"time_scale": 0.05, "startup_seconds": 2.0}, "parameters": {},
        "optimization": {"strategy": "list", "configs": [{"tp-size": 1}] * experiments,
                         "objective": "maximize_throughput", "max_parallel_experiments": parallel,
                         "timeout_per_iteration": 120},
        "benchmark": {"traffic_scenarios": ["D(256,64)"], "num_concurrency": [4],
                      "max_requests_per_iteration": 40, "max_time_per_iteration": 60},
    }


def get(url: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError:
        status = 0
    return status, time.perf_counter() - t0


def poll(base: str, task_ids: list[int], stop: threading.Event, samples: dict, lock: threading.Lock,
         seed: int, pause: float) -> None:
    rng = random.Random(seed)
    stop.wait(rng.uniform(0, pause))  # pollers start spread over one period, as browsers would
    while not stop.is_set():
        for pattern in ENDPOINTS:
            status, seconds = get(base + pattern.format(id=rng.choice(task_ids)))
            with lock:
                samples[pattern].append((status, seconds))
        stop.wait(pause)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--experiments", type=int, default=20)
    parser.add_argument("--pollers", type=int, default=10)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between a poller's rounds")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = private_home("webload", args.database_url, AUTOTUNER_TICK_INTERVAL="1")

    from sqlalchemy import select

    from app.domain.states import TASK_TERMINAL
    from app.domain.taskspec import parse_task
    from app.processes import free_port
    from app.stack import Stack
    from app.store.db import session_scope
    from app.store.migrate import upgrade
    from app.store.models import Task
    from app.task_service import create_task

    upgrade()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stack = Stack(home=home, simulated_gpus=args.gpus, web_port=port).start()
    samples: dict[str, list[tuple[int, float]]] = {p: [] for p in ENDPOINTS}
    lock, stop = threading.Lock(), threading.Event()
    try:
        deadline = time.monotonic() + 120
        while get(base + "/healthz")[0] != 200:
            if time.monotonic() > deadline:
                raise SystemExit(f"the web server did not answer; see {home / 'logs'}")
            time.sleep(0.2)
        parallel = max(1, args.gpus // args.tasks + 1)
        ids = [create_task(parse_task(task_data(f"load-{i}", args.experiments, parallel)))
               for i in range(args.tasks)]
        pollers = [threading.Thread(target=poll, args=(base, ids, stop, samples, lock, i, args.pause), daemon=True)
                   for i in range(args.pollers)]
        t0 = time.monotonic()
        for p in pollers:
            p.start()
        while True:
            lines, give_up = stack.supervise()
            if give_up:
                raise SystemExit(give_up)
            with session_scope() as s:
                statuses = s.execute(select(Task.status).where(Task.id.in_(ids))).scalars().all()
            if all(st in TASK_TERMINAL for st in statuses):
                break
            if time.monotonic() - t0 > 900:
                raise SystemExit("the tasks did not end within 900 s")
            time.sleep(0.5)
        stop.set()
        for p in pollers:
            p.join()
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        stack.stop()
    rows = []
    for pattern, got in samples.items():
        ms = [s * 1000 for _, s in got]
        rows.append({"endpoint": pattern, "requests": len(got), "errors": sum(1 for st, _ in got if st != 200),
                     "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(percentile(ms, 0.95), 1),
                     "max_ms": round(max(ms), 1)})
    result = {"database": "postgresql" if args.database_url else "sqlite", "tasks": args.tasks,
              "experiments_per_task": args.experiments, "pollers": args.pollers, "pause_s": args.pause,
              "gpus": args.gpus,
              "seconds": round(elapsed, 1), "cpus": os.cpu_count(), "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.tasks} tasks x {args.experiments} simulated experiments on {args.gpus} simulated GPUs, "
              f"{args.pollers} pollers pausing {args.pause:g} s, {result['database']}, {elapsed:.0f} s, {os.cpu_count()} CPUs shared by all")
        print(f"{'endpoint':<24}{'requests':>9}{'errors':>8}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
        for r in rows:
            print(f"{r['endpoint']:<24}{r['requests']:>9}{r['errors']:>8}{r['p50_ms']:>9}{r['p95_ms']:>9}{r['max_ms']:>9}")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
