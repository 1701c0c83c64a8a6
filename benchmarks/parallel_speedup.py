"""The seed note's claim, measured: 20 experiments of equal length on 4 simulated GPUs,
run with max_parallel_experiments 1 and then 4 on the same embedded stack (real Redis,
real Celery worker processes, real sim engines over HTTP). Prints both wall times and the
speedup; `--json` prints them as one object.

    python benchmarks/parallel_speedup.py [--experiments 20] [--startup 1.5] [--gpus 4]

Wall time is measured from the task's creation to its end, as recorded in the store, so
it includes every overhead a user pays: coordination, queueing, engine start and stop.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def task(n: int, parallel: int, startup: float) -> dict:
    """n identical experiments (list strategy), each ~`startup` seconds of engine start-up
    plus one tiny request, so every experiment lasts about the same."""
    return {
        "task_name": f"speedup-p{parallel}",
        "base_runtime": "sim",
        "model": {"id_or_path": "llama-3-8b"},
        "sim": {"time_scale": 0.01, "startup_seconds": startup},
        "parameters": {"tp-size": [1]},
        "optimization": {
            "strategy": "list",
            "configs": [{"tp-size": 1}] * n,
            "objective": "minimize_latency",
            "max_parallel_experiments": parallel,
            "timeout_per_iteration": 120,
        },
        "benchmark": {
            "traffic_scenarios": ["D(16,4)"],
            "num_concurrency": [1],
            "max_requests_per_iteration": 1,
            "max_time_per_iteration": 30,
        },
    }


def run_one(data: dict) -> tuple[float, dict]:
    from app.console import load_report, watch
    from app.store.db import session_scope
    from app.store.models import Task
    from app.task_service import create_task
    from app.domain.taskspec import parse_task

    task_id = create_task(parse_task(data))
    report = watch(task_id, interval=1.0)  # timing comes from the store, not from polling
    with session_scope() as s:
        t = s.get(Task, task_id)
        wall = (t.finished_at - t.created_at).total_seconds()
    exps = load_report(task_id)["experiments"]
    from datetime import datetime

    def ts(v: str) -> datetime:
        return datetime.fromisoformat(v.rstrip("Z"))

    durations = [(ts(e["finished_at"]) - ts(e["started_at"])).total_seconds() for e in exps]
    return wall, {
        "status": report["status"],
        "experiments": len(exps),
        "mean_experiment_s": sum(durations) / len(durations),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=20)
    parser.add_argument("--startup", type=float, default=2.0, help="simulated engine start-up, real seconds")
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="autotuner-bench-"))
    os.environ["AUTOTUNER_HOME"] = str(home)
    os.environ.pop("DATABASE_URL", None)
    from app.store.migrate import upgrade
    from app.stack import Stack

    upgrade()
    stack = Stack(home=home, simulated_gpus=args.gpus).start()
    try:
        from app.store.db import session_scope
        from app.store.models import Worker

        deadline = time.monotonic() + 60
        while True:  # the pool must be registered before timing starts
            with session_scope() as s:
                if s.query(Worker).filter(Worker.online.is_(True)).count():
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"worker did not register; see {home / 'logs'}")
            time.sleep(0.1)
        results = {}
        for parallel in (1, args.gpus):
            wall, info = run_one(task(args.experiments, parallel, args.startup))
            results[parallel] = {"wall_s": round(wall, 2), **info}
    finally:
        stack.stop()
    speedup = results[1]["wall_s"] / results[args.gpus]["wall_s"]
    out = {
        "experiments": args.experiments,
        "gpus": args.gpus,
        "sequential": results[1],
        "parallel": results[args.gpus],
        "speedup": round(speedup, 2),
        "ideal": args.gpus,
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{args.experiments} experiments (~{results[1]['mean_experiment_s']:.2f}s each) on {args.gpus} simulated GPUs: "
            f"max_parallel=1 {results[1]['wall_s']:.1f}s, max_parallel={args.gpus} {results[args.gpus]['wall_s']:.1f}s, "
            f"speedup {speedup:.2f}x (ideal {args.gpus}x)"
        )


if __name__ == "__main__":
    main()
