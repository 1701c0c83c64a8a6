"""Control-plane scale: the cost of one scheduling decision as the backlog grows, on a store
the size of a large cluster, measured with the project's own functions.

    python benchmarks/scale.py [--gpus 1024] [--tasks 20] [--backlogs 100,1000,3000,10000]
                               [--passes 30] [--coordinators 4] [--database-url URL] [--json]

The store holds `--gpus` simulated GPUs in registered groups of 8 (worker and GPU rows, as
1,024 GPUs' workers would register them; no process runs), `--tasks` running tasks, one
running 1-GPU experiment on every GPU (the steady state of a large sweep: all busy) and a
growing backlog of waiting experiments needing 1, 2, 4 or 8 GPUs, half of them in task 1.
For each backlog size it times:

- `schedule()` alone (one global pass over the waiting queue, nothing free);
- `coordinate(task)` for one task (the pass an experiment's end triggers: advance that task,
  then schedule);
- a hand-over: a running experiment's end recorded, which frees its GPU, and the placement
  of what waits on it, in one transaction (`end_and_place`, what a finishing job runs; the
  task's expected length learns after it), and for comparison as it was done before, in three
  (`lifecycle.end_reported` in a transaction of its own, then the expected length, then `schedule()`);
  each followed, untimed, by the claim of what was placed; with the statements each sends;

at the largest backlog, the same coordinate(task) passes from 1 and then `--coordinators`
processes at once (they queue for the scheduler lock, held for one `schedule()`); then, with
every GPU freed at once, the first pass that places the whole pool, and the web
pages and API at that size (through Flask's test client: server time, no network).
Median and p95 in ms; the database is a fresh SQLite file unless `--database-url` names an
empty PostgreSQL database.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import percentile, private_home  # noqa: E402

GROUP = 8
NEEDS = [1, 1, 1, 1, 2, 2, 4, 8]


def summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {"median_ms": round(statistics.median(ms), 2), "p95_ms": round(percentile(ms, 0.95), 2)}


def timed(fn, passes: int, warmup: int = 3) -> tuple[list[float], list]:
    """`passes` timed calls after `warmup` untimed ones (connections, caches, statements)."""
    for _ in range(warmup):
        fn()
    seconds, results = [], []
    for _ in range(passes):
        t0 = time.perf_counter()
        results.append(fn())
        seconds.append(time.perf_counter() - t0)
    return seconds, results


def build_pool(gpus: int) -> None:
    from sqlalchemy import insert

    from app.store.db import session_scope
    from app.store.models import Gpu, Worker, utcnow

    now = utcnow()
    with session_scope() as s:
        workers, rows = [], []
        for g in range(gpus // GROUP):
            host, group = f"node{g:04d}", f"node{g:04d}-sim"
            workers.append(dict(name=f"gpu-{group}@{host}", group=group, host=host, queue=f"gpu.{group}", slots=GROUP,
                                simulated=True, online=True, incarnation="bench", started_at=now, last_heartbeat=now))
            rows += [dict(host=host, index=i, group=group, worker=f"gpu-{group}@{host}", name="Simulated H100-80GB",
                          memory_mb=81_559, simulated=True, online=True) for i in range(GROUP)]
        s.execute(insert(Worker), workers)
        s.execute(insert(Gpu), rows)


def make_tasks(n: int) -> list[int]:
    from app.domain.taskspec import parse_task
    from app.store.db import session_scope
    from app.store.models import Task
    from app.task_service import create_task

    ids = []
    for i in range(n):
        data = {"task_name": f"scale-{i}", "base_runtime": "sim", "model": {"id_or_path": "llama-3-8b"},
                "parameters": {}, "optimization": {"strategy": "list", "configs": [{"tp-size": 1}],
                                                    "max_parallel_experiments": 1024,
                                                    "timeout_per_iteration": 600},
                "benchmark": {"traffic_scenarios": ["D(64,16)"], "num_concurrency": [1],
                              "max_requests_per_iteration": 4}}
        ids.append(create_task(parse_task(data), enqueue=False))
    with session_scope() as s:
        for t in s.query(Task).filter(Task.id.in_(ids)):
            t.status, t.started_at = "running", t.created_at
    return ids


class Experiments:
    """Bulk rows: what a long sweep leaves in the store, without running it."""

    def __init__(self, task_ids: list[int], rng: random.Random) -> None:
        self.task_ids, self.rng = task_ids, rng
        self.seq = {t: 0 for t in task_ids}

    def _task(self) -> int:
        return self.task_ids[0] if self.rng.random() < 0.5 else self.rng.choice(self.task_ids)

    def add(self, session, n: int, **row) -> list[dict]:
        from sqlalchemy import insert

        from app.store.models import Experiment

        rows = []
        for _ in range(n):
            task = row.get("task_id") or self._task()
            self.seq[task] += 1
            rows.append(dict(task_id=task, seq=self.seq[task], params={"i": self.seq[task]}, simulated=True,
                             priority=0, gpus=[], attempt=0, gpus_needed=self.rng.choice(NEEDS), state="pending") | row
                        | {"task_id": task})
        for i in range(0, len(rows), 1000):
            session.execute(insert(Experiment), rows[i:i + 1000])
        return rows


def fill_every_gpu(exps: Experiments) -> None:
    """One running 1-GPU experiment (with its attempt) on every GPU."""
    from sqlalchemy import insert, select

    from app.store.db import session_scope
    from app.store.models import Attempt, Experiment, Gpu, utcnow

    now = utcnow()
    with session_scope() as s:
        gpus = s.execute(select(Gpu).order_by(Gpu.id)).scalars().all()
        exps.add(s, len(gpus), state="running", gpus_needed=1, attempt=1, started_at=now, queued_at=now,
                 host="bench", worker="bench")
        running = s.execute(select(Experiment).where(Experiment.state == "running", Experiment.group.is_(None))
                            .order_by(Experiment.id)).scalars().all()
        attempts = []
        for gpu, exp in zip(gpus, running):
            gpu.held_by, exp.group, exp.gpus = exp.id, gpu.group, [gpu.label]
            attempts.append(dict(experiment_id=exp.id, number=1, state="running", gpus=[gpu.label], queued_at=now,
                                 started_at=now, worker="bench", host="bench"))
        s.execute(insert(Attempt), attempts)


def waiting_count() -> int:
    from sqlalchemy import func, select

    from app.store.db import session_scope
    from app.store.models import Experiment

    with session_scope(readonly=True) as s:
        return s.execute(select(func.count()).select_from(Experiment).where(Experiment.state == "pending")).scalar_one()


class Statements:
    """Counts the statements sent to the database while in use (`with`)."""

    def __init__(self) -> None:
        self.count = 0

    def _one(self, *_args) -> None:
        self.count += 1

    def __enter__(self) -> "Statements":
        from sqlalchemy import event

        from app.store.db import get_engine

        event.listen(get_engine(), "before_cursor_execute", self._one)
        return self

    def __exit__(self, *_exc) -> None:
        from sqlalchemy import event

        from app.store.db import get_engine

        event.remove(get_engine(), "before_cursor_execute", self._one)


def hand_over(rng: random.Random, merged: bool) -> tuple[float, int, int]:
    """End one running experiment and place on what it freed, in one transaction (`merged`)
    or as before; then claim what was placed. Returns the hand-over's seconds and statements
    (the claim excluded) and how many were placed."""
    from sqlalchemy import select

    from app.coordinator import end_and_place, schedule
    from app.store import lifecycle
    from app.store.db import session_scope
    from app.store.models import Experiment

    with session_scope(readonly=True) as s:
        ids = s.execute(select(Experiment.id, Experiment.attempt).where(Experiment.state == "running")
                        .limit(200)).all()
    exp_id, attempt = rng.choice(ids)
    outcome = dict(metrics={}, objective=1.0, slo_ok=True)
    with Statements() as statements:
        t0 = time.perf_counter()
        if merged:  # as a job runs it: the expected length learns after the jobs are sent
            ended, placed = end_and_place(exp_id, attempt, "succeeded", **outcome)
            seconds = time.perf_counter() - t0
        else:
            with session_scope() as s:
                ended = lifecycle.end_reported(s, exp_id, attempt, "succeeded", **outcome)
            lifecycle.learn_length(ended)
            with session_scope() as s:
                placed = schedule(s)
            seconds = time.perf_counter() - t0
    if merged:
        lifecycle.learn_length(ended)
    for d in placed:
        lifecycle.claim(d.experiment_id, d.attempt, worker="bench", host="bench", pid=os.getpid())
    return seconds, len(placed), statements.count


def _coordinate_many(job: tuple[list[int], int, int, float]) -> tuple[list[float], float, float]:
    """One coordinator process: after warming up, waits for the common start, then `passes`
    passes for random tasks, each timed; returns them with its first start and last end."""
    from app.coordinator import coordinate

    task_ids, passes, seed, start_at = job
    rng = random.Random(seed)
    for _ in range(3):
        coordinate(rng.choice(task_ids))
    time.sleep(max(0.0, start_at - time.time()))
    began = time.time()
    samples = timed(lambda: coordinate(rng.choice(task_ids)), passes, warmup=0)[0]
    return samples, began, time.time()


def contention(task_ids: list[int], coordinators: int, passes: int) -> dict:
    """`coordinators` processes passing at once (as several coordinator workers would): how
    long each pass takes when they queue for the scheduler lock."""
    import multiprocessing

    start_at = time.time() + 10  # every process imported and warmed up by then (spawn takes seconds)
    with multiprocessing.get_context("spawn").Pool(coordinators) as pool:
        per_process = pool.map(_coordinate_many, [(task_ids, passes, i, start_at) for i in range(coordinators)])
    samples = [x for xs, _, _ in per_process for x in xs]
    wall = max(end for _, _, end in per_process) - min(began for _, began, _ in per_process)
    return {"coordinators": coordinators, "passes": len(samples), **summary(samples),
            "passes_per_s": round(len(samples) / wall, 1)}


def free_everything() -> None:
    from sqlalchemy import update

    from app.store.db import session_scope
    from app.store.models import Attempt, Experiment, Gpu

    with session_scope() as s:
        s.execute(update(Gpu).values(held_by=None))
        s.execute(update(Experiment).where(Experiment.state.in_(("running", "queued"))).values(state="succeeded"))
        s.execute(update(Attempt).where(Attempt.state.in_(("running", "queued"))).values(state="succeeded"))


def web_figures(task_id: int, passes: int) -> list[dict]:
    from app import create_app

    client = create_app({"TESTING": True}).test_client()
    rows = []
    for url in ("/", "/api/tasks", f"/tasks/{task_id}", f"/api/tasks/{task_id}/live", "/pool", "/api/pool"):
        client.get(url)
        seconds, responses = timed(lambda: client.get(url), passes)
        assert all(r.status_code == 200 for r in responses), (url, responses[0].status_code)
        rows.append({"url": url.replace(str(task_id), "<5k-experiment task>"), **summary(seconds),
                     "bytes": len(responses[-1].data)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=1024)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--backlogs", default="100,1000,3000,10000")
    parser.add_argument("--passes", type=int, default=30)
    parser.add_argument("--coordinators", type=int, default=4, help="processes passing at once, at the largest backlog")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    private_home("scale", args.database_url, CELERY_BROKER_URL="memory://")
    from app.coordinator import coordinate, schedule
    from app.store.db import session_scope
    from app.store.migrate import upgrade

    rng = random.Random(args.seed)
    upgrade()
    build_pool(args.gpus)
    task_ids = make_tasks(args.tasks)
    exps = Experiments(task_ids, rng)
    fill_every_gpu(exps)
    database = "postgresql" if args.database_url else "sqlite"
    rows = []
    for backlog in [int(b) for b in args.backlogs.split(",")]:
        with session_scope() as s:
            exps.add(s, max(0, backlog - waiting_count()))

        def one_schedule():
            with session_scope() as s:
                return schedule(s)

        sched, _ = timed(one_schedule, args.passes)
        coord, _ = timed(lambda: coordinate(rng.choice(task_ids)), args.passes)
        hand = [hand_over(rng, merged=True) for _ in range(args.passes)]
        split = [hand_over(rng, merged=False) for _ in range(args.passes)]
        rows.append({"waiting": waiting_count(), "schedule": summary(sched), "coordinate_one_task": summary(coord),
                     "hand_over": summary([h[0] for h in hand]), "hand_over_before": summary([h[0] for h in split]),
                     "hand_over_placed": sum(h[1] for h in hand), "hand_overs": len(hand),
                     "hand_over_statements": statistics.median(h[2] for h in hand),
                     "hand_over_before_statements": statistics.median(h[2] for h in split)})
        print(f"{database}: {rows[-1]}", file=sys.stderr, flush=True)
    concurrent = [contention(task_ids, n, args.passes) for n in (1, args.coordinators)]
    free_everything()
    waiting_before = waiting_count()
    t0 = time.perf_counter()
    with session_scope() as s:
        first = schedule(s)
    first_s = time.perf_counter() - t0
    with session_scope(readonly=True) as s:
        from sqlalchemy import func, select

        from app.store.models import Gpu

        gpus_taken = s.execute(select(func.count()).select_from(Gpu).where(Gpu.held_by.is_not(None))).scalar_one()
    web = web_figures(task_ids[0], args.passes)
    result = {"database": database, "gpus": args.gpus, "tasks": args.tasks, "passes": args.passes, "rows": rows,
              "first_placement": {"free_gpus": args.gpus, "waiting": waiting_before, "placed": len(first), "gpus_taken": gpus_taken,
                                  "seconds": round(first_s, 3)},
              "contention": concurrent, "web": web, "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{database}, {args.gpus} simulated GPUs in groups of {GROUP}, {args.tasks} tasks, {args.passes} passes "
          f"per figure, {os.cpu_count()} CPUs; median / p95 ms")
    print(f"{'waiting':>8} {'schedule()':>16} {'coordinate(task)':>18} {'hand-over':>16} {'before':>16} "
          f"{'placed':>9} {'statements (before)':>20}")
    for r in rows:
        f = lambda k: f"{r[k]['median_ms']:.1f} / {r[k]['p95_ms']:.1f}"  # noqa: E731
        print(f"{r['waiting']:>8} {f('schedule'):>16} {f('coordinate_one_task'):>18} {f('hand_over'):>16} "
              f"{f('hand_over_before'):>16} {r['hand_over_placed']:>4}/{r['hand_overs']:<4} "
              f"{r['hand_over_statements']:>8g} ({r['hand_over_before_statements']:g})")
    fp = result["first_placement"]
    print(f"first pass with every GPU free: {fp['placed']} experiments placed on {fp['gpus_taken']} of "
          f"{fp['free_gpus']} GPUs ({fp['waiting']} waiting) in {fp['seconds'] * 1000:.0f} ms")
    for c in concurrent:
        print(f"{c['coordinators']} coordinator process(es) at once: coordinate(task) {c['median_ms']:.1f} / "
              f"{c['p95_ms']:.1f} ms, {c['passes_per_s']} passes/s in all")
    for w in web:
        print(f"  GET {w['url']:<36} {w['median_ms']:>7.1f} / {w['p95_ms']:>7.1f} ms  {w['bytes']:>9,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
