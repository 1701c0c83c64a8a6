"""The scheduling policy alone: `benchmarks/scheduling.py`'s heterogeneous workload replayed
through the planner (`app.domain.placement.plan`) with no overhead at all, so that what the
policy costs and what the system costs can be told apart.

    python benchmarks/policy_replay.py [--seeds 1-20] [--experiments 48] [--variants] [--json]

An event loop over one group of 8 GPUs and one `list` task (48 experiments, its
max_parallel_experiments 8): an experiment starts the instant a pass places it, time jumps
to the next end. At each end the stack's passes are replayed in their order:

1. the finishing job's placement (`end_and_place`) with what the store holds at that moment:
   the predictions, the order and the task's moving average the previous coordinator pass
   left (the one-pass lag);
2. the succeeded length folded into the task's moving average (`learn_length`);
3. the coordinator's pass for the task (`advance`: the next experiments created, the
   predictions renewed, the waiting ones re-ordered; then `schedule`), placing on whatever
   the first pass left free.

The real coordinator driven the same way on a store, with a virtual clock, ends at the same
moment as this replay of its policy (tests/test_policy_replay.py). Lengths are the workload's
own. Columns, each a policy:

- coordinator: what the coordinator does (app.coordinator): lengths learned (app.domain.lengths
  fitted on the finished experiments' parameters and lengths: a waiting experiment's prediction
  renewed when it moves by more than 5 %, a running one given one only if it had none; the
  task's moving average, else its time limit, where the fit cannot tell), the task's waiting
  experiments served longest predicted first (`placement.longest_first`: the task's
  max_parallel smallest tags dealt to its longest, per pass) and
  `coordinator.AHEAD_ROUNDS` rounds created ahead, with the lag above;
- before: the coordinator before that: creation order, one round created ahead, predictions
  renewed only in a pass that creates experiments;
- exact, longest first: every experiment's true length known when it is created, otherwise
  the coordinator's policy (where predicting lengths from parameters leads);
- exact, all visible: the same with all 48 experiments created at once;
- exact, creation order: true lengths, the order and window of before;
- moving average: the task's moving average of finished lengths only (before per-experiment
  predictions), the order and window of before;
- none: nothing (the reserved start is unknown, so the reservation is strict: strict FIFO);
- greedy first-fit: any waiting experiment that fits starts; no reservation (starves large
  experiments).

With `--variants`, the coordinator's policy changed one thing at a time instead: one or three
rounds created ahead, no lag (one pass after each end, with everything renewed), predictions
and order renewed only in a pass that creates experiments (as before), creation order, all the
waiting experiments' tags dealt in each pass (not only max_parallel of them). `--experiments N`
replays the first N experiments of each seed's workload (a shorter task: with 24, all are
created in the first pass).

Reported: makespan ÷ max(GPU-seconds ÷ GPUs, longest), per seed and the median over the
seeds (seed 1 is the workload scheduling.py runs).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.coordinator import AHEAD_ROUNDS, REPREDICT_CHANGE  # noqa: E402
from app.domain.lengths import LengthModel, expected_length, learned  # noqa: E402
from app.domain.placement import Clock, FreeGpu, GroupState, Waiting, longest_first, plan  # noqa: E402
from benchmarks.scheduling import heterogeneous_experiments, task  # noqa: E402

GPUS, PARALLEL, TIME_LIMIT, SLIP = 8, 8, 300.0, 60.0
TASK = 1


@dataclass(frozen=True)
class Policy:
    told: str  # what the planner is told of lengths: exact, learned, average, none, greedy
    longest_first: bool = False  # the task's waiting experiments re-ordered longest predicted first
    ahead: int = 1  # rounds created ahead (the list strategy does not learn from results)
    every_result: bool = False  # predictions renewed at each new result, not only when creating
    lag: bool = True  # the finishing job places before the coordinator's pass
    head: int | None = PARALLEL  # tags dealt longest first per pass (None: all the waiting ones')


POLICIES = {
    "coordinator": Policy("learned", longest_first=True, ahead=AHEAD_ROUNDS, every_result=True),
    "before": Policy("learned"),
    "exact, longest first": Policy("exact", longest_first=True, ahead=AHEAD_ROUNDS, every_result=True),
    "exact, all visible": Policy("exact", longest_first=True, ahead=48, every_result=True),
    "exact, creation order": Policy("exact"),
    "moving average": Policy("average"),
    "none": Policy("none"),
    "greedy first-fit": Policy("greedy"),
}
VARIANTS = {
    "coordinator": POLICIES["coordinator"],
    "1 round ahead": Policy("learned", longest_first=True, ahead=1, every_result=True),
    "3 rounds ahead": Policy("learned", longest_first=True, ahead=3, every_result=True),
    "no lag": Policy("learned", longest_first=True, ahead=AHEAD_ROUNDS, every_result=True, lag=False),
    "renewed when creating": Policy("learned", longest_first=True, ahead=AHEAD_ROUNDS),
    "creation order": Policy("learned", ahead=AHEAD_ROUNDS, every_result=True),
    "all tags dealt": Policy("learned", longest_first=True, ahead=AHEAD_ROUNDS, every_result=True, head=None),
}


class Replay:
    """One run of one policy: the store's rows as plain lists, the stack's passes as methods."""

    def __init__(self, lengths: list[float], params: list[dict], needs: list[int], policy: Policy) -> None:
        self.lengths, self.params, self.needs, self.policy = lengths, params, needs, policy
        self.tag: list[float] = []  # per created experiment, in creation order
        self.expected: list[float | None] = []
        self.promised: list[float | None] = []
        self.pending: list[int] = []
        self.running: dict[int, tuple[float, set[int]]] = {}  # experiment -> (end, GPU indices)
        self.succeeded: list[int] = []
        self.fitted_on = 0  # results the stored predictions were made from
        self.average: float | None = None  # the task's moving average (expected_experiment_s)
        self.share_finish = 0.0
        self.free = set(range(GPUS))
        self.now = 0.0

    def run(self) -> float:
        """Makespan (seconds from the first pass)."""
        self.advance()
        self.place()
        while self.running:
            done = min(self.running, key=lambda i: (self.running[i][0], i))
            self.now, gpus = self.running.pop(done)
            self.free |= gpus
            self.succeeded.append(done)
            if self.policy.lag:
                self.place()
            self.average = learned(self.average, self.lengths[done])
            self.advance()
            self.place()
        assert not self.pending and len(self.tag) == len(self.lengths)
        return self.now

    def predict(self, model: LengthModel | None, i: int) -> float | None:
        if self.policy.told == "exact":
            return self.lengths[i]
        return model.predict(self.params[i]) if model is not None else None

    def advance(self) -> None:
        """The coordinator's step for the task (app.coordinator.advance)."""
        policy = self.policy
        active = len(self.pending) + len(self.running)
        free = min(PARALLEL * (1 + policy.ahead) - active, len(self.lengths) - len(self.tag))
        renew = free > 0 or (policy.every_result and len(self.succeeded) != self.fitted_on)
        if not renew:
            return
        model = (LengthModel.fit([(self.params[i], self.lengths[i]) for i in self.succeeded])
                 if policy.told == "learned" else None)
        for _ in range(max(free, 0)):
            i = len(self.tag)
            own = self.predict(model, i)
            self.tag.append(self.share_finish)
            self.share_finish += self.needs[i] * expected_length(own, self.average, TIME_LIMIT)
            self.expected.append(own)
            self.promised.append(None)
            self.pending.append(i)
        for i in [*self.pending, *self.running]:  # coordinator._repredict
            own = self.predict(model, i)
            if own is not None and (self.expected[i] is None or (
                    i in self.pending and abs(own - self.expected[i]) > REPREDICT_CHANGE * self.expected[i])):
                self.expected[i] = own
        self.fitted_on = len(self.succeeded)
        if policy.longest_first and len(self.pending) >= 2:
            waiting = sorted(self.pending)
            now = [self.predict(model, i) if model is not None else self.expected[i]
                   for i in waiting]  # the order by the latest predictions (coordinator._renew)
            dealt = longest_first([self.tag[i] for i in waiting], now, self.average, policy.head)
            for i, tag in zip(waiting, dealt or ()):
                if self.tag[i] != tag:
                    self.tag[i], self.promised[i] = tag, None

    def place(self) -> None:
        """One scheduling pass (app.coordinator.schedule)."""
        if self.policy.told == "greedy":
            self._place_greedy()
            return
        queues: dict[int, list[Waiting]] = {}
        for i in sorted(self.pending, key=lambda i: (self.tag[i], i)):
            queues.setdefault(self.needs[i], []).append(
                Waiting((0, self.tag[i], i), i, TASK, self.promised[i], self.expected[i]))
        durations = {TASK: expected_length(None, self.average, TIME_LIMIT)} if self.policy.told != "none" else {}
        clock = Clock(now=self.now, durations=durations, slip=SLIP)
        ends = [(end - self.lengths[i] + clock.duration(TASK, self.expected[i]), self.needs[i])
                for i, (end, _) in self.running.items()]
        group = GroupState("g", GPUS, GPUS, len(self.running), [FreeGpu(g, g) for g in sorted(self.free)], ends)
        result = plan(dict(sorted(queues.items())), [group], {"g": GPUS}, clock, {TASK: PARALLEL - len(self.running)})
        for p in result.placements:
            self._start(p.experiment_id, set(p.gpu_ids))
        reserved = result.reservation
        if reserved is not None and reserved.start != float("inf") and self.promised[reserved.experiment_id] is None:
            self.promised[reserved.experiment_id] = reserved.start

    def _place_greedy(self) -> None:
        for i in list(self.pending):
            if len(self.running) < PARALLEL and self.needs[i] <= len(self.free):
                self._start(i, set(sorted(self.free)[:self.needs[i]]))

    def _start(self, i: int, gpus: set[int]) -> None:
        self.pending.remove(i)
        self.free -= gpus
        self.running[i] = (self.now + self.lengths[i], gpus)


def seeds_of(text: str) -> list[int]:
    """"1-20" or "1,2,5"."""
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(s) for s in text.split(",")]


def ratios(seed: int, policies: dict[str, Policy], experiments: int = 48) -> dict[str, float]:
    exps = heterogeneous_experiments(random.Random(seed))[:experiments]
    params = task("replay", exps, PARALLEL)["optimization"]["configs"]
    lengths, needs = [s for _, s in exps], [g for g, _ in exps]
    bound = max(sum(g * s for g, s in exps) / GPUS, max(lengths))
    return {name: round(Replay(lengths, params, needs, p).run() / bound, 3) for name, p in policies.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-20", help="a range (1-20) or a list (1,2,5)")
    parser.add_argument("--experiments", type=int, default=48, help="the first N of each seed's workload")
    parser.add_argument("--variants", action="store_true", help="the coordinator's policy, one thing changed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    policies = VARIANTS if args.variants else POLICIES
    rows = [{"seed": seed, **ratios(seed, policies, args.experiments)} for seed in seeds_of(args.seeds)]
    medians = {name: round(statistics.median(r[name] for r in rows), 3) for name in policies}
    if args.json:
        print(json.dumps({"seeds": rows, "median": medians}, indent=2))
        return 0
    print(f"heterogeneous workload ({args.experiments} experiments), zero overhead: makespan / lower bound")
    print(f"{'seed':>6}" + "".join(f"  {name}" for name in policies))
    for r in rows:
        print(f"{r['seed']:>6}" + "".join(f"  {r[name]:>{len(name)}.3f}" for name in policies))
    print(f"{'median':>6}" + "".join(f"  {medians[name]:>{len(name)}.3f}" for name in policies))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
