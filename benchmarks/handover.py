"""The hand-over alone: what a finishing job's transaction and the next job's claim cost, the
database work inside the gap between one experiment's end and the next one's start, measured
without engines, Celery workers or anything else competing for the CPU.

    python benchmarks/handover.py [--gpus 4] [--waiting 400] [--rounds 100]
                                  [--database-url URL] [--broker URL] [--json]

The store holds `--gpus` simulated GPUs (one worker group), one running task with a running
1-GPU experiment on every GPU and `--waiting` more waiting (the uniform workload of
benchmarks/scheduling.py, at rest). Each round does what a job does when it ends and what the
next job does when it starts: `end_and_place` (the end recorded, the GPU freed and the next
experiment placed on it, one transaction), `send_experiments` (to `--broker`; by default
Celery's in-memory transport, which measures the call, not a broker), `lifecycle.learn_length`
(after the send: not in the gap, but CPU on the same cores), then `lifecycle.claim` of what
was placed. For each step: the median wall time, CPU time (`time.process_time`: steadier
than wall time on a shared machine) and statements sent (SQLAlchemy's cursor events; the
pool's connection ping is not one of them). The first 10 rounds are not counted. The database
is a fresh SQLite file unless `--database-url` names an empty PostgreSQL database.
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

from benchmarks.common import private_home  # noqa: E402

WARMUP = 10
STEPS = ("end_and_place", "send", "learn_length", "claim")


class Meter:
    """Wall time, CPU time and statements of one step at a time."""

    def __init__(self) -> None:
        from sqlalchemy import event

        from app.store.db import get_engine

        self.statements = 0
        event.listen(get_engine(), "before_cursor_execute", self._one)

    def _one(self, *_args) -> None:
        self.statements += 1

    def measure(self, call) -> tuple[object, dict[str, float]]:
        self.statements = 0
        c0, t0 = time.process_time(), time.perf_counter()
        result = call()
        return result, {"wall_ms": (time.perf_counter() - t0) * 1000, "cpu_ms": (time.process_time() - c0) * 1000,
                        "statements": self.statements}


def build(gpus: int, waiting: int) -> None:
    """The store: the pool, one task, a running experiment on every GPU and `waiting` more."""
    import benchmarks.scale as scale
    from app.store.db import session_scope
    from app.store.migrate import upgrade

    upgrade()
    scale.GROUP = gpus
    scale.NEEDS[:] = [1]
    scale.build_pool(gpus)
    exps = scale.Experiments(scale.make_tasks(1), random.Random(1))
    scale.fill_every_gpu(exps)
    with session_scope() as s:
        exps.add(s, waiting)


def one_round(meter: Meter) -> dict[str, dict[str, float]]:
    """A running experiment ends; what was placed on its GPU is sent and claimed."""
    from sqlalchemy import select

    from app.celery_app import send_experiments
    from app.coordinator import end_and_place
    from app.store import lifecycle
    from app.store.db import session_scope
    from app.store.models import Experiment

    with session_scope(readonly=True) as s:
        exp_id, attempt = s.execute(select(Experiment.id, Experiment.attempt)
                                    .where(Experiment.state == "running").limit(1)).one()
    figures = {}
    (ended, placed), figures["end_and_place"] = meter.measure(
        lambda: end_and_place(exp_id, attempt, "succeeded", metrics={}, objective=1.0, slo_ok=True))
    _, figures["send"] = meter.measure(lambda: send_experiments(placed))
    _, figures["learn_length"] = meter.measure(lambda: lifecycle.learn_length(ended))
    claims, figures["claim"] = meter.measure(
        lambda: [lifecycle.claim(d.experiment_id, d.attempt, worker="bench", host="bench", pid=os.getpid())
                 for d in placed])
    if len(placed) != 1 or None in claims:
        raise SystemExit(f"a round placed {len(placed)} experiment(s), claimed {claims}: the store is not as built")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--waiting", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--broker", default="memory://")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.waiting < args.rounds + WARMUP:
        parser.error("--waiting must cover --rounds and the warm-up rounds")
    private_home("handover", args.database_url, CELERY_BROKER_URL=args.broker)
    build(args.gpus, args.waiting)
    meter = Meter()
    rounds = [one_round(meter) for _ in range(WARMUP + args.rounds)][WARMUP:]
    medians = {step: {k: round(statistics.median(r[step][k] for r in rounds), 2) for k in rounds[0][step]}
               for step in STEPS}
    gap = [r["end_and_place"]["wall_ms"] + r["send"]["wall_ms"] + r["claim"]["wall_ms"] for r in rounds]
    result = {"database": "postgresql" if args.database_url else "sqlite", "gpus": args.gpus,
              "waiting": args.waiting, "rounds": args.rounds, "steps": medians,
              "in_the_gap_ms": round(statistics.median(gap), 2), "load_average": os.getloadavg()[0]}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['database']}, {args.gpus} GPUs, {args.waiting} waiting, {args.rounds} rounds, load average "
          f"{result['load_average']:.2f}; medians")
    print(f"{'step':<14} {'wall ms':>8} {'CPU ms':>8} {'statements':>11}")
    for step, m in medians.items():
        print(f"{step:<14} {m['wall_ms']:>8.2f} {m['cpu_ms']:>8.2f} {m['statements']:>11g}")
    print(f"end_and_place + send + claim (in the gap): {result['in_the_gap_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
