"""The GPU ledger: the planner's FIFO-with-reservation rules (property tests on the pure
planner) and the store's all-or-nothing, single-holder guarantees (property tests on a
real SQLite database)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from app.store import ledger
from app.domain.placement import CAPPED, FreeGpu, GroupState, pick_gpus, plan
from tests.planner_reference import queues_of
from app.store.ledger import LedgerConflict

pytestmark = pytest.mark.unit


def make_groups(sizes: list[int], used: list[set[int]] | None = None) -> list[GroupState]:
    groups, next_id = [], 1
    for gi, size in enumerate(sizes):
        ids = list(range(next_id, next_id + size))
        next_id += size
        taken = (used or [set()] * len(sizes))[gi]
        free = [FreeGpu(i, idx) for idx, i in enumerate(ids) if idx not in taken]
        groups.append(GroupState(f"g{gi}", size, size, len(taken), free))
    return groups


group_sizes = st.lists(st.integers(1, 8), min_size=1, max_size=4)
needs = st.lists(st.sampled_from([1, 1, 1, 2, 4, 8]), min_size=1, max_size=20)


@given(group_sizes, needs)
def test_plan_never_gives_a_gpu_twice_and_places_whole_experiments(sizes, want):
    groups = make_groups(sizes)
    capacity = {g.group: g.total_gpus for g in groups}
    members = {g.group: {f.id for f in g.free} for g in groups}
    result = plan(queues_of(enumerate(want)), groups, capacity)
    seen: set[int] = set()
    for p in result.placements:
        assert len(p.gpu_ids) == want[p.experiment_id]  # all of its GPUs
        assert set(p.gpu_ids) <= members[p.group]  # from one group
        assert not seen & set(p.gpu_ids)  # nobody else's
        seen |= set(p.gpu_ids)
    placed = {p.experiment_id for p in result.placements}
    for exp_id in set(range(len(want))) - placed - set(result.waiting) - set(result.impossible):
        # not read: an earlier experiment needing no more GPUs already waits
        assert any(w < exp_id and want[w] <= want[exp_id] for w in result.waiting), exp_id
    for exp_id in result.impossible:
        assert want[exp_id] > max(sizes)


@st.composite
def pools(draw):
    """Groups of random sizes and slots, some GPUs busy with expected ends, a few offline
    groups that only count for capacity."""
    sizes = draw(st.lists(st.integers(1, 8), min_size=0, max_size=5))
    groups, next_id = [], 0
    for gi, size in enumerate(sizes):
        busy = draw(st.sets(st.integers(0, size - 1), max_size=size))
        slots = draw(st.integers(0, size))
        free = [FreeGpu(next_id + i, i, draw(st.sampled_from([0.0, 0.5]))) for i in range(size) if i not in busy]
        running = min(slots, draw(st.integers(0, len(busy))))
        # what runs: `running` experiments sharing the busy GPUs, each with an expected end
        shares = [len(busy) // running + (1 if k < len(busy) % running else 0) for k in range(running)] if running else []
        ends = [(draw(st.sampled_from([50.0, 100.0, 130.0, 200.0])), n) for n in shares]
        groups.append(GroupState(f"g{gi}", size, slots, running, free, ends))
        next_id += size
    capacity = {g.group: g.total_gpus for g in groups}
    capacity.update({f"offline{i}": draw(st.integers(1, 16)) for i in range(draw(st.integers(0, 1)))})
    return groups, capacity


waiting_rows = st.lists(st.tuples(st.sampled_from([1, 1, 1, 2, 2, 3, 4, 8, 16]), st.integers(0, 3),
                                  st.sampled_from([None, None, 0.0, 90.0])), max_size=60)


@given(pools(), waiting_rows, st.dictionaries(st.integers(0, 3), st.sampled_from([5.0, 20.0, 40.0, 300.0])),
       st.sampled_from([0.0, 30.0]), st.none() | st.fixed_dictionaries({t: st.integers(0, 3) for t in range(4)}))
def test_the_incremental_planner_decides_what_walking_every_row_decides(pool, rows, durations, slip, room):
    """Same placements in the same order, same impossible set, same reservation, the same
    reason for every experiment it read, and it reads no further than placements can go
    (one row per placement, impossible row and row of a task at its limit, plus one per GPU
    count)."""
    import copy

    from app.domain.placement import Clock, Waiting
    from tests.planner_reference import plan_every_row

    groups, capacity = pool
    clock = Clock(now=10.0, durations=durations, default_duration=60.0, slip=slip)
    items = [(Waiting(i, i, task, promised), need) for i, (need, task, promised) in enumerate(rows)]
    reference = plan_every_row(items, copy.deepcopy(groups), capacity, clock, dict(room) if room else None)
    read: list[int] = []

    def queue(need):
        for item, n in items:
            if n == need:
                read.append(item.experiment_id)
                yield item

    left = dict(room) if room else None
    result = plan({need: queue(need) for need in {n for _, n in items}}, copy.deepcopy(groups), capacity, clock, left)
    assert result.placements == reference.placements
    assert result.impossible == reference.impossible
    assert result.reservation == reference.reservation
    assert result.waiting == {e: reference.waiting[e] for e in result.waiting}
    capped = sum(1 for reason in result.waiting.values() if reason == CAPPED)
    assert len(read) <= len(result.placements) + len(result.impossible) + capped + len({n for _, n in items})
    if room:  # no task starts more than it had room for
        for task, limit in room.items():
            started = sum(1 for p in result.placements if items[p.experiment_id][0].task_id == task)
            assert started <= limit and left[task] == limit - started


@given(pools(), waiting_rows)
def test_backfill_never_delays_the_reservation(pool, rows):
    """Whatever starts in the reserved group either is expected to end by the reserved start
    or leaves the GPUs and slot the reserved experiment needs free at that start."""
    import copy

    from app.domain.placement import Clock, Waiting

    groups, capacity = pool
    clock = Clock(now=10.0, durations={0: 5.0, 1: 40.0, 2: 300.0}, default_duration=60.0)
    items = [(Waiting(i, i, task, promised), need) for i, (need, task, promised) in enumerate(rows)]
    queues: dict[int, list] = {}
    for item, need in items:
        queues.setdefault(need, []).append(item)
    before = copy.deepcopy(groups)
    result = plan(queues, groups, capacity, clock)
    res = result.reservation
    if res is None or res.start == float("inf"):
        return
    need = next(n for item, n in items if item.experiment_id == res.experiment_id)
    group = next(g for g in groups if g.group == res.group)
    original = next(g for g in before if g.group == res.group)
    # replay the group at the reserved start: what is still running then holds its GPUs
    still = [(end, n) for end, n in group.ends if end > res.start]
    assert original.total_gpus - sum(n for _, n in still) >= need
    assert len(still) < group.slots
@given(st.integers(1, 8), needs)
def test_plan_is_fifo_within_a_group(size, want):
    """With one group, what starts is exactly a prefix of the (possible) waiting line."""
    groups = make_groups([size])
    result = plan(queues_of(enumerate(want)), groups, {"g0": size})
    possible = [i for i in range(len(want)) if i not in result.impossible]
    placed = [p.experiment_id for p in result.placements]
    assert placed == possible[: len(placed)]


def test_reservation_keeps_a_big_experiment_from_starving():
    # Two groups of 4; group g0 has 3 GPUs busy. A 4-GPU experiment waits; 1-GPU ones
    # behind it may not take g1's GPUs (reserved for the big one), only g0's last one.
    groups = make_groups([4, 4], used=[{0, 1, 2}, {0}])
    result = plan(queues_of([(1, 4), (2, 1), (3, 1)]), groups, {"g0": 4, "g1": 4})
    assert 1 in result.waiting and "reserved" in result.waiting[1]
    assert [(p.experiment_id, p.group) for p in result.placements] == [(2, "g0")]
    assert 3 in result.waiting


def test_too_big_for_every_group_is_impossible_not_waiting():
    result = plan(queues_of([(1, 8)]), make_groups([4, 4]), {"g0": 4, "g1": 4})
    assert "largest worker group has 4" in result.impossible[1]


def test_waits_when_no_worker_has_registered_yet():
    result = plan(queues_of([(1, 1)]), [], {})
    assert result.placements == [] and not result.impossible
    assert "register" in result.waiting[1]


def test_prefers_neighbouring_gpus():
    free = [FreeGpu(10, 0), FreeGpu(12, 2), FreeGpu(13, 3), FreeGpu(15, 5)]
    assert [g.index for g in pick_gpus(free, 2)] == [2, 3]


# --- the store ---------------------------------------------------------------------------

def _pool(n_gpus: int = 4) -> list[int]:
    """GPU ids of a pool of n GPUs and 8 experiments, created on first use."""
    from app.store.db import session_scope
    from app.store.models import Experiment, Gpu, Task
    from app.store.pool import GpuSpec, register_worker

    with session_scope() as s:
        existing = list(s.execute(select(Gpu.id).order_by(Gpu.index)).scalars())
    if existing:
        return existing
    register_worker("w@h", "g", "h", "gpu.g", n_gpus, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(n_gpus)], "x", 1)
    with session_scope() as s:
        task = Task(name="t", status="running", spec={}, engine="sglang", deployment_mode="sim",
                    strategy="list", objective="minimize_latency", max_parallel=8, max_iterations=8, notes=[])
        s.add(task)
        s.add_all(Experiment(task=task, seq=i + 1, params={}, gpus_needed=1) for i in range(8))
        s.flush()
        return list(s.execute(select(Gpu.id).order_by(Gpu.index)).scalars())


ops = st.lists(
    st.tuples(st.sampled_from(["take", "release"]), st.integers(1, 8), st.sets(st.integers(0, 3), min_size=1, max_size=4)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_store_take_release_sequences(db, sequence):
    """Random take/release sequences against the real tables never leave a GPU with two
    holders, and a take that cannot have all its GPUs changes nothing."""
    from app.store.db import session_scope
    from app.store.models import Gpu, GpuAllocation

    with session_scope() as s:
        s.query(GpuAllocation).delete()
        s.query(Gpu).update({Gpu.held_by: None})
    gpu_ids = _pool()
    model: dict[int, int] = {}  # gpu id -> holder
    for op, exp_id, idxs in sequence:
        chosen = tuple(gpu_ids[i] for i in sorted(idxs))
        if op == "take":
            expect_ok = all(g not in model for g in chosen)
            try:
                with session_scope() as s:
                    ledger.take(s, exp_id, 1, chosen)
                assert expect_ok
                model.update({g: exp_id for g in chosen})
            except LedgerConflict:
                assert not expect_ok
        else:
            with session_scope() as s:
                ledger.release(s, exp_id)
            model = {g: h for g, h in model.items() if h != exp_id}
        with session_scope() as s:
            actual = {g.id: g.held_by for g in s.execute(select(Gpu)).scalars() if g.held_by is not None}
            open_allocs = s.execute(select(GpuAllocation).where(GpuAllocation.released_at.is_(None))).scalars().all()
        assert actual == model
        assert sorted(a.gpu_id for a in open_allocs) == sorted(model)  # one open interval per held GPU


def test_a_short_experiment_backfills_the_reserved_group_until_the_promise_slips():
    """One group of 4: 2 GPUs busy until t=100, 2 free. The oldest waiting experiment needs
    4 (reserved for t=100); a 1-GPU experiment expected to take 20 s may use a free GPU now
    (it ends before 100), a 1-GPU one of 300 s may not, and when that one is first in line the
    1-GPU queue waits for the next pass. Once the reserved experiment's start has slipped past
    its promise by more than the allowed slip, nothing backfills."""
    from app.domain.placement import Clock, Waiting

    def group():
        return GroupState("g0", 4, 4, 1, [FreeGpu(3, 2), FreeGpu(4, 3)], [(100.0, 2)])

    clock = Clock(now=10.0, durations={1: 20.0, 2: 300.0, 3: 50.0}, slip=30.0)

    def run(promised):
        queues = {4: [Waiting(0, 10, 3, promised)], 1: [Waiting(1, 11, 2), Waiting(2, 12, 1)]}
        return plan(queues, [group()], {"g0": 4}, clock)

    kept = run(promised=None)
    assert kept.reservation.group == "g0" and kept.reservation.start == 100.0 and not kept.reservation.strict
    assert kept.placements == [] and "run past the start reserved" in kept.waiting[11]  # 11 first: too long
    short_first = plan({4: [Waiting(0, 10, 3)], 1: [Waiting(1, 12, 1), Waiting(2, 11, 2)]}, [group()], {"g0": 4}, clock)
    assert [p.experiment_id for p in short_first.placements] == [12]  # ends at 30, before 100
    def short_run(promised):
        queues = {4: [Waiting(0, 10, 3, promised)], 1: [Waiting(1, 12, 1)]}
        return plan(queues, [group()], {"g0": 4}, clock)

    slipped = short_run(promised=-40.0)  # promised t=-40, now 10: slipped 50 s > 30 s
    assert slipped.reservation.strict and slipped.placements == []
    on_time = short_run(promised=0.0)  # slipped 10 s: still within the allowed 30 s
    assert not on_time.reservation.strict and [p.experiment_id for p in on_time.placements] == [12]


def test_multi_gpu_experiments_stay_within_one_topology_domain():
    """Free: GPUs 0-1 in d0 (2 free), 4-7 in d1 (4 free). Two GPUs fit the tighter d0 and
    leave d1 whole; three or four go to d1; five cannot stay in one domain and take the least
    utilised. Without domains the choice is as before."""
    free = [FreeGpu(0, 0, 0.0, "d0"), FreeGpu(1, 1, 0.0, "d0")] + [FreeGpu(i, i, 0.0, "d1") for i in range(4, 8)]
    assert [g.id for g in pick_gpus(free, 2)] == [0, 1]
    assert {g.domain for g in pick_gpus(free, 3)} == {"d1"}
    assert [g.id for g in pick_gpus(free, 4)] == [4, 5, 6, 7]
    assert len(pick_gpus(free, 5)) == 5
    plain = [FreeGpu(g.id, g.index, g.utilization) for g in free]
    assert [g.id for g in pick_gpus(plain, 2)] == [0, 1] and [g.id for g in pick_gpus(plain, 4)] == [4, 5, 6, 7]


def test_a_full_pool_does_not_read_a_capped_tasks_backlog():
    """With no GPU free nothing can start: a page of a task without room that runs out is not
    read further (MoreData) just to label what lies behind it; with one GPU free it is, since
    another task's experiment behind it could start."""
    from app.domain.placement import MoreData, Page, Waiting

    page = Page([Waiting((0, float(i), i), i, task_id=1) for i in range(2)], complete=False)
    full = [GroupState("g", 2, 2, 2, [])]
    result = plan({1: page}, full, {"g": 2}, room={1: 0})
    assert result.placements == [] and result.waiting == {0: CAPPED, 1: CAPPED}
    one_free = [GroupState("g", 2, 2, 1, [FreeGpu(1, 1)])]
    with pytest.raises(MoreData):
        plan({1: page}, one_free, {"g": 2}, room={1: 0})
