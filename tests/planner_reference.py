"""The straightforward planner, kept as the tests' oracle: it walks the whole waiting line in
order, every row, with the same rules (priority and fair-share order, one reservation, backfill
that ends before the reservation or uses its spare GPUs, strict once the promised start
slipped; a GPU count whose first candidate the reservation refused waits for the next pass). The
incremental `app.domain.placement.plan`, which reads per-GPU-count queues only as far as
placements go, must decide exactly what this one decides."""
from __future__ import annotations

from typing import Iterable

from app.domain.placement import CAPPED, Clock, GroupState, Placement, Plan, Reservation, Waiting, pick_gpus


def queues_of(waiting: Iterable[tuple[int, int]]) -> dict[int, list[Waiting]]:
    """The planner's per-GPU-count queues for an in-memory waiting list [(experiment id, GPUs
    needed)] in queue order (the position is the order key; one task)."""
    queues: dict[int, list[Waiting]] = {}
    for position, (exp_id, need) in enumerate(waiting):
        queues.setdefault(need, []).append(Waiting(position, exp_id))
    return queues


def plan_every_row(waiting: list[tuple[Waiting, int]], groups: list[GroupState], capacity: dict[str, int],
                   clock: Clock | None = None, room: dict[int, int] | None = None) -> Plan:
    """`waiting`: (item, GPUs needed) in global order; `room`: starts left per task."""
    clock = clock or Clock()
    out = Plan([], {}, {})
    largest = max(capacity.values(), default=0)
    refused: set[int] = set()  # GPU counts whose head the reservation refused: done for the pass
    for item, need in waiting:
        exp_id, res = item.experiment_id, out.reservation
        if need in refused:
            continue
        if not capacity:
            out.waiting[exp_id] = "waiting for a GPU worker to register"
        elif need > largest:
            out.impossible[exp_id] = (f"needs {need} GPUs but the largest worker group has {largest}; "
                                      "start a worker with more GPUs in one group")
        elif room is not None and room[item.task_id] <= 0:
            out.waiting[exp_id] = CAPPED
        else:
            end = clock.now + clock.duration(item.task_id, item.expected)
            hosts = [g for g in groups if g.can_host(need)]

            def may(g: GroupState) -> bool:
                if res is None or g.group != res.group:
                    return True
                return not res.strict and (end <= res.start or (need <= res.spare_gpus and res.spare_slots > 1))

            usable = sorted((g for g in hosts if may(g)), key=lambda g: (len(g.free) - need, g.group))
            if usable:
                g = usable[0]
                ids = tuple(sorted(f.id for f in pick_gpus(g.free, need)))
                g.free = [f for f in g.free if f.id not in ids]
                g.busy_slots += 1
                g.ends.append((end, need))
                if res is not None and g.group == res.group and end > res.start:
                    res.spare_gpus, res.spare_slots = res.spare_gpus - need, res.spare_slots - 1
                out.placements.append(Placement(exp_id, g.group, ids))
                if room is not None:
                    room[item.task_id] -= 1
            elif hosts and not res.strict:
                refused.add(need)
                out.waiting[exp_id] = (f"waiting for {need} free GPU(s); it would run past the start reserved "
                                       f"in group {res.group}")
            elif res is None and (res := _reserve(item, need, groups, clock)) is not None:
                out.reservation = res
                out.waiting[exp_id] = f"waiting for {need} free GPU(s); group {res.group} is reserved for it"
            else:
                out.waiting[exp_id] = (f"waiting for {need} free GPU(s)" if any(g.total_gpus >= need for g in groups)
                                       else f"waiting for an online worker group with {need} GPU(s)")
    return out


def _reserve(item: Waiting, need: int, groups: list[GroupState], clock: Clock) -> Reservation | None:
    options = []
    able = [g for g in groups if g.total_gpus >= need and g.slots > 0]
    if able and all(not g.free for g in able):
        return Reservation(item.experiment_id, min(g.group for g in able), float("inf"), 0, 0, True)
    for g in able:
        if len(g.free) < max(len(h.free) for h in able):
            continue
        free, busy, at = len(g.free), g.busy_slots, None
        if busy < g.slots and free >= need:
            at = (clock.now, free, g.slots - busy)
        for moment, gpus in sorted(g.ends):
            if at is not None:
                break
            free, busy = free + gpus, busy - 1
            if busy < g.slots and free >= need:
                at = (max(moment, clock.now), free, g.slots - busy)
        options.append((at, g))
    if not options:
        return None
    timed = [(at, g) for at, g in options if at is not None]
    if not timed:
        g = max((g for _, g in options), key=lambda g: (len(g.free), g.group))
        return Reservation(item.experiment_id, g.group, float("inf"), 0, 0, True)
    (start, free, slots), g = min(timed, key=lambda t: (t[0][0], t[1].group))
    slipped = item.promised is not None and clock.now > item.promised + clock.slip
    return Reservation(item.experiment_id, g.group, start, free - need, slots, slipped or start == float("inf"))
