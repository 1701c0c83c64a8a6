"""Placement: which waiting experiment gets which free GPUs, as a pure function of the pool's
state (no database: the store's ledger feeds it and applies its decisions).

Order is FIFO with one reservation: waiting experiments are served oldest first; when the
oldest cannot be placed, the group it will start on is reserved for it and younger
experiments may only backfill *other* groups, so a stream of 1-GPU experiments cannot
starve a waiting 4-GPU one.

The planner reads the waiting queue as one stream per GPU count and stops reading a stream
as soon as its head does not fit: free GPUs only shrink during a pass and the reservation
only excludes more, so nothing behind that head (and nothing needing more GPUs) can fit
either. A pass therefore reads about one row per placement plus one per GPU count, however
long the backlog: the decisions are exactly those of serving the whole queue in order.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping


@dataclass
class FreeGpu:
    id: int
    index: int
    utilization: float = 0.0


@dataclass
class GroupState:
    """What the planner needs to know about one worker group right now."""

    group: str
    total_gpus: int
    slots: int
    busy_slots: int
    free: list[FreeGpu] = field(default_factory=list)

    def can_host(self, need: int) -> bool:
        return self.busy_slots < self.slots and len(self.free) >= need


@dataclass(frozen=True)
class Placement:
    experiment_id: int
    group: str
    gpu_ids: tuple[int, ...]


@dataclass
class Plan:
    placements: list[Placement]
    waiting: dict[int, str]  # experiment id -> why it waits
    impossible: dict[int, str]  # experiment id -> why no registered group can ever host it


def pick_gpus(free: list[FreeGpu], need: int) -> list[FreeGpu]:
    """Prefer a run of neighbouring indices (on one board they share the fastest links),
    and among those the least utilised; else the least utilised GPUs."""
    by_index = sorted(free, key=lambda g: g.index)
    windows = [
        by_index[i : i + need]
        for i in range(len(by_index) - need + 1)
        if by_index[i + need - 1].index - by_index[i].index == need - 1
    ]
    if windows:
        return min(windows, key=lambda w: (sum(g.utilization for g in w), w[0].index))
    return sorted(free, key=lambda g: (g.utilization, g.index))[:need]


Queues = Mapping[int, Iterable[tuple[Any, int]]]


def queues_of(waiting: Iterable[tuple[int, int]]) -> dict[int, list[tuple[int, int]]]:
    """Per-GPU-count queues for an in-memory waiting list [(experiment id, GPUs needed)] in
    queue order (the position is the order key)."""
    queues: dict[int, list[tuple[int, int]]] = {}
    for position, (exp_id, need) in enumerate(waiting):
        queues.setdefault(need, []).append((position, exp_id))
    return queues


def plan(queues: Queues, groups: list[GroupState], capacity: dict[str, int]) -> Plan:
    """Decide placements for the waiting experiments in queue order.

    `queues` maps a GPU count to the experiments needing that many, as (order key, experiment
    id) pairs in queue order; the keys of all queues together give the global order. Each is
    read lazily and only as far as placements can go. `capacity` is the size of every
    registered group, online or not: an experiment larger than all of them can never run and
    is reported as impossible rather than waiting forever. Waiting reasons are given for the
    experiments read. Mutates nothing it is given except the `groups` it plans into.
    """
    placements: list[Placement] = []
    reasons: dict[int, str] = {}
    impossible: dict[int, str] = {}
    reserved: str | None = None
    largest = max(capacity.values(), default=0)
    heads: list[tuple[Any, int, int, Iterator[tuple[Any, int]]]] = []

    def advance(need: int, stream: Iterator[tuple[Any, int]]) -> None:
        item = next(stream, None)
        if item is not None:
            heapq.heappush(heads, (item[0], need, item[1], stream))

    for need, queue in queues.items():
        advance(need, iter(queue))
    while heads:
        _, need, exp_id, stream = heapq.heappop(heads)
        if not capacity:
            reasons[exp_id] = "waiting for a GPU worker to register"
            continue
        if need > largest:
            impossible[exp_id] = (
                f"needs {need} GPUs but the largest worker group has {largest}; "
                "start a worker with more GPUs in one group"
            )
            advance(need, stream)
            continue
        fits = [g for g in groups if g.group != reserved and g.can_host(need)]
        if fits:
            # Best fit: the group left with the fewest free GPUs keeps big holes for big jobs.
            chosen = min(fits, key=lambda g: (len(g.free) - need, g.group))
            taken = pick_gpus(chosen.free, need)
            taken_ids = {g.id for g in taken}
            chosen.free = [g for g in chosen.free if g.id not in taken_ids]
            chosen.busy_slots += 1
            placements.append(Placement(exp_id, chosen.group, tuple(sorted(taken_ids))))
            advance(need, stream)
            continue
        # Not read further: nothing behind this head fits this pass.
        if reserved is None:
            candidates = [g for g in groups if g.total_gpus >= need and g.slots > 0]
            if candidates:
                reserved = max(candidates, key=lambda g: (len(g.free), g.group)).group
                reasons[exp_id] = f"waiting for {need} free GPU(s); group {reserved} is reserved for it"
                continue
        reasons[exp_id] = (
            f"waiting for {need} free GPU(s)"
            if any(g.total_gpus >= need for g in groups)
            else f"waiting for an online worker group with {need} GPU(s)"
        )
    return Plan(placements, reasons, impossible)
