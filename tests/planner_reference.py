"""The straightforward planner, kept as the tests' oracle: it walks the whole waiting line in
order, every row, as the scheduler did before it read the queue per GPU count. The
incremental `app.domain.placement.plan` must decide exactly what this one decides."""
from __future__ import annotations

from app.domain.placement import GroupState, Placement, Plan, pick_gpus


def plan_every_row(waiting: list[tuple[int, int]], groups: list[GroupState], capacity: dict[str, int]) -> Plan:
    placements: list[Placement] = []
    reasons: dict[int, str] = {}
    impossible: dict[int, str] = {}
    reserved: str | None = None
    largest = max(capacity.values(), default=0)
    for exp_id, need in waiting:
        if not capacity:
            reasons[exp_id] = "waiting for a GPU worker to register"
            continue
        if need > largest:
            impossible[exp_id] = (f"needs {need} GPUs but the largest worker group has {largest}; "
                                  "start a worker with more GPUs in one group")
            continue
        fits = [g for g in groups if g.group != reserved and g.can_host(need)]
        if fits:
            chosen = min(fits, key=lambda g: (len(g.free) - need, g.group))
            taken_ids = {g.id for g in pick_gpus(chosen.free, need)}
            chosen.free = [g for g in chosen.free if g.id not in taken_ids]
            chosen.busy_slots += 1
            placements.append(Placement(exp_id, chosen.group, tuple(sorted(taken_ids))))
            continue
        if reserved is None:
            candidates = [g for g in groups if g.total_gpus >= need and g.slots > 0]
            if candidates:
                reserved = max(candidates, key=lambda g: (len(g.free), g.group)).group
                reasons[exp_id] = f"waiting for {need} free GPU(s); group {reserved} is reserved for it"
                continue
        reasons[exp_id] = (f"waiting for {need} free GPU(s)" if any(g.total_gpus >= need for g in groups)
                           else f"waiting for an online worker group with {need} GPU(s)")
    return Plan(placements, reasons, impossible)
