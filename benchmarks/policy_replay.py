"""The scheduling policy alone: `benchmarks/scheduling.py`'s heterogeneous workload replayed
through the planner (`app.domain.placement.plan`) with no overhead at all, so that what the
policy costs and what the system costs can be told apart.

    python benchmarks/policy_replay.py [--seeds 1,2,3,4,5] [--json]

An event loop: at time 0 and at each experiment's end, one planning pass over the waiting
experiments, exactly as the coordinator runs it (one group of 8 GPUs, the task's
max_parallel_experiments 8 and its next round created ahead, so at most 16 experiments exist
unfinished), then time jumps to the next end. Lengths are the workload's own. What the
planner is told about them:

- exact: every experiment's true length;
- learned: what the coordinator does (app.domain.lengths fitted on the finished experiments'
  parameters and lengths; waiting experiments re-predicted at each pass, a running one once,
  when it had no prediction; the task's moving average until the fit can tell);
- moving average: the task's moving average of finished lengths only (as before per-experiment
  predictions);
- none: nothing (the reserved start is unknown, so the reservation is strict: strict FIFO);

and, for comparison, greedy first-fit (any waiting experiment that fits starts; no reservation,
which starves large experiments). Reported: makespan ÷ max(GPU-seconds ÷ GPUs, longest).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scheduling import heterogeneous_experiments, task  # noqa: E402

GPUS, PARALLEL = 8, 8
POLICIES = ("exact", "learned", "moving average", "none", "greedy first-fit")


def replay(lengths: list[float], params: list[dict], needs: list[int], told: str) -> float:
    """Makespan of one replay (seconds from the first pass)."""
    from app.domain.lengths import LengthModel, learned
    from app.domain.placement import Clock, FreeGpu, GroupState, Waiting, plan

    n, created, now = len(lengths), 0, 0.0
    pending: list[int] = []
    running: dict[int, tuple[float, set[int]]] = {}  # experiment -> (end, GPU indices)
    free, finished = set(range(GPUS)), []
    average: float | None = None
    kept: dict[int, float | None] = {}  # running experiments' predictions
    while True:
        while created < n and len(pending) + len(running) < 2 * PARALLEL:  # the round created ahead
            pending.append(created)
            created += 1
        if not pending and not running:
            return now
        expected: dict[int, float | None] = {}
        if told == "greedy first-fit":
            placed = []
            for i in pending:
                if len(running) + len(placed) < PARALLEL and needs[i] <= len(free) - sum(needs[j] for j in placed):
                    placed.append(i)
            taken = sorted(free)
            placements = []
            for i in placed:
                placements.append((i, set(taken[:needs[i]])))
                taken = taken[needs[i]:]
        else:
            model = LengthModel.fit([(params[i], lengths[i]) for i in finished]) if told == "learned" else None
            expected = {i: lengths[i] if told == "exact" else model.predict(params[i]) if model else None
                        for i in [*pending, *running]}
            for i in running:  # a running experiment keeps the first prediction it had
                expected[i] = kept[i] = kept.get(i) if kept.get(i) is not None else expected[i]
            queues: dict[int, list[Waiting]] = {}
            for i in pending:
                queues.setdefault(needs[i], []).append(Waiting((i,), i, 1, None, expected[i]))
            ends = []
            for i, (end, _) in running.items():
                known = expected[i] if expected[i] is not None else average
                ends.append((end - lengths[i] + known if known is not None else float("inf"), needs[i]))
            group = GroupState("g", GPUS, GPUS, len(running), [FreeGpu(g, g) for g in sorted(free)], ends)
            durations = {1: average} if average is not None and told != "none" else {}
            result = plan(dict(sorted(queues.items())), [group], {"g": GPUS}, Clock(now=now, durations=durations),
                          {1: PARALLEL - len(running)})
            placements = [(p.experiment_id, set(p.gpu_ids)) for p in result.placements]
        for i, gpus in placements:
            kept[i] = expected.get(i)
            pending.remove(i)
            free -= gpus
            running[i] = (now + lengths[i], gpus)
        done = min(running, key=lambda i: running[i][0])
        now, gpus = running.pop(done)
        free |= gpus
        finished.append(done)
        average = learned(average, lengths[done])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        exps = heterogeneous_experiments(random.Random(seed))
        params = task("replay", exps, PARALLEL)["optimization"]["configs"]
        lengths, needs = [s for _, s in exps], [g for g, _ in exps]
        bound = max(sum(g * s for g, s in exps) / GPUS, max(lengths))
        rows.append({"seed": seed, **{p: round(replay(lengths, params, needs, p) / bound, 3) for p in POLICIES}})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("heterogeneous workload, zero overhead: makespan / lower bound")
    print(f"{'seed':>5}" + "".join(f"{p:>18}" for p in POLICIES))
    for r in rows:
        print(f"{r['seed']:>5}" + "".join(f"{r[p]:>18.3f}" for p in POLICIES))
    print(f"{'median':>5}" + "".join(f"{statistics.median(r[p] for r in rows):>18.3f}" for p in POLICIES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
