"""The scheduler reads the waiting queue head first per GPU count and writes its placements
together; on real databases it must decide exactly what the straightforward planner decides
when handed the whole queue (every pending experiment of a running task, by task priority,
then fair-share tag, then age), and read that queue in the same order however it pages."""
from __future__ import annotations

import random

import pytest
from sqlalchemy import select

from tests.planner_reference import plan_every_row

pytestmark = pytest.mark.process


def _store(rng: random.Random) -> list[int]:
    """Worker groups of random sizes (one offline), some GPUs busy, tasks of random
    priorities (one cancelling), pending experiments of random needs."""
    from app.domain.taskspec import parse_task
    from app.store import pool
    from app.store.db import session_scope
    from app.store.models import Experiment, Gpu, Task, Worker
    from app.task_service import create_task
    from tests.helpers import mixed_task

    for g in range(rng.randint(1, 5)):
        size = rng.choice([1, 2, 4, 8])
        specs = [pool.GpuSpec(i, "Simulated H100-80GB", 81_559, f"uuid-{g}-{i}", True, rng.choice([0.0, 0.3]))
                 for i in range(size)]
        pool.register_worker(f"w{g}", f"host{g}-sim", f"host{g}", f"gpu.host{g}-sim", rng.randint(1, size), specs,
                             "inc", 1000 + g)
    task_ids = []
    for t in range(rng.randint(1, 4)):
        task_id = create_task(parse_task(mixed_task([{"tp-size": 1}], parallel=8)), enqueue=False)
        task_ids.append(task_id)
    with session_scope() as s:
        tasks = s.execute(select(Task).where(Task.id.in_(task_ids))).scalars().all()
        for i, task in enumerate(tasks):
            task.status = "cancelling" if i == 3 else "running"
            task.priority = rng.choice([0, 0, 5])
        seq = {t.id: 0 for t in tasks}
        for _ in range(rng.randint(0, 40)):
            task = rng.choice(tasks)
            seq[task.id] += 1
            s.add(Experiment(task_id=task.id, seq=seq[task.id], params={}, gpus_needed=rng.choice([1, 1, 2, 3, 4, 8, 16]),
                             priority=task.priority, share_tag=rng.choice([0.0, 10.0, 20.0]), state="pending",
                             simulated=True))
        s.flush()
        busy = [g for g in s.execute(select(Gpu)).scalars() if rng.random() < 0.3]
        for gpu in busy:
            seq[tasks[0].id] += 1
            holder = Experiment(task_id=tasks[0].id, seq=seq[tasks[0].id], params={}, gpus_needed=1, state="running",
                                group=gpu.group, gpus=[gpu.label], attempt=1, simulated=True)
            s.add(holder)
            s.flush()
            gpu.held_by = holder.id
        offline = s.execute(select(Worker).order_by(Worker.name)).scalars().first()
        if rng.random() < 0.3:
            offline.online = False
            for gpu in s.execute(select(Gpu).where(Gpu.group == offline.group)).scalars():
                gpu.online = False
    return task_ids


@pytest.mark.parametrize("seed", range(6))
def test_schedule_places_exactly_what_walking_the_whole_queue_places(database_url, seed, monkeypatch):
    from datetime import timedelta

    from app import coordinator
    from app.config import get_settings
    from app.domain.placement import Waiting
    from app.store.db import session_scope
    from app.store.models import Experiment, Gpu, Task, utcnow
    from app.store.passes import PassReader

    rng = random.Random(seed)
    _store(rng)
    now = utcnow()
    monkeypatch.setattr(coordinator, "utcnow", lambda: now)
    with session_scope() as s:  # some history: expected lengths, running experiments' starts
        for task in s.execute(select(Task)).scalars():
            task.expected_experiment_s = rng.choice([None, 5.0, 50.0])
        for exp in s.execute(select(Experiment).where(Experiment.state == "running")).scalars():
            exp.started_at = now - timedelta(seconds=rng.choice([1, 20, 100]))
    with session_scope(readonly=True) as s:
        waiting = s.execute(select(Experiment.id, Experiment.gpus_needed, Experiment.task_id).join(Task)
                            .where(Experiment.state == "pending", Task.status == "running")
                            .order_by(Task.priority.desc(), Experiment.share_tag, Experiment.id)).all()
        reader = PassReader(s, now, get_settings().reservation_slip)  # the oracle sees everything up front
        reader.read_queues(free_gpus=8 * len(waiting))  # every waiting experiment's task, as a pass reads it
        reader.read_ends(tuple(g.group for g in reader.groups))
        expected = plan_every_row([(Waiting(i, exp_id, task_id), need) for i, (exp_id, need, task_id)
                                   in enumerate(waiting)], reader.groups_to_plan(), reader.capacity, reader.clock,
                                  dict(reader.room))
    with session_scope() as s:
        dispatches = coordinator.schedule(s)
    with session_scope(readonly=True) as s:
        held: dict[int, tuple[int, ...]] = {}
        for gpu in s.execute(select(Gpu).where(Gpu.held_by.is_not(None)).order_by(Gpu.id)).scalars():
            held.setdefault(gpu.held_by, ())
            held[gpu.held_by] += (gpu.id,)
        failed = set(s.execute(select(Experiment.id).where(Experiment.state == "failed")).scalars())
    assert [d.experiment_id for d in dispatches] == [p.experiment_id for p in expected.placements]
    assert {p.experiment_id: held[p.experiment_id] for p in expected.placements} == {
        p.experiment_id: p.gpu_ids for p in expected.placements}
    assert failed == set(expected.impossible)


def test_the_waiting_queues_page_in_priority_then_age_order(database_url):
    """Every GPU count waited for has its queue (the first pages of all of them read in one
    statement, the rest page by page), each in priority, fair-share tag, age order, however
    many GPUs are free (which sets the first page's size)."""
    from app.store.db import session_scope
    from app.store.models import Experiment, Task, utcnow
    from app.store.passes import PassReader

    _store(random.Random(11))
    with session_scope() as s:
        whole: dict[int, list[int]] = {}
        for need, exp_id in s.execute(select(Experiment.gpus_needed, Experiment.id).join(Task)
                                      .where(Experiment.state == "pending", Task.status == "running")
                                      .order_by(Experiment.priority.desc(), Experiment.share_tag, Experiment.id)):
            whole.setdefault(need, []).append(exp_id)
        pending_needs = set(s.execute(select(Experiment.gpus_needed).where(Experiment.state == "pending")).scalars())
        assert len(whole) >= 3
        for free in (0, 1, 5, 100_000):
            reader = PassReader(s, utcnow(), 60.0)
            reader.read_queues(free)
            for need in reader.queues:
                while not reader.queues[need].complete:
                    reader.read_more(need)
            queues = reader.queues
            assert set(queues) == pending_needs, free  # a count only a cancelling task waits for reads empty
            assert {need: [w.experiment_id for w in q] for need, q in queues.items() if need in whole} == whole, free
            assert all(not list(q) for need, q in queues.items() if need not in whole)


def test_placement_keeps_a_multi_gpu_experiment_within_one_topology_domain(database_url):
    """A worker of 8 GPUs in two domains (0-3, 4-7) as its discovery reported them, GPUs 1
    and 2 busy: a 2-GPU experiment takes 0 and 3 (the tighter domain, though not neighbours),
    a 4-GPU one takes 4-7; the pool API shows the domains."""
    from app import create_app
    from app.coordinator import schedule
    from app.domain.taskspec import parse_task
    from app.store import pool
    from app.store.db import session_scope
    from app.store.models import Experiment, Gpu, Task
    from app.task_service import create_task
    from tests.helpers import mixed_task

    specs = [pool.GpuSpec(i, "Simulated H100-80GB", 81_559, f"u{i}", True, 0.0, f"sim-d{i // 4}") for i in range(8)]
    pool.register_worker("w", "h-sim", "h", "gpu.h-sim", 8, specs, "inc", 1)
    task_id = create_task(parse_task(mixed_task([{"tp-size": 1}], parallel=8)), enqueue=False)
    with session_scope() as s:
        s.get(Task, task_id).status = "running"
        holder = Experiment(task_id=task_id, seq=1, params={}, gpus_needed=2, state="running", group="h-sim",
                            attempt=1, simulated=True)
        two = Experiment(task_id=task_id, seq=2, params={}, gpus_needed=2, state="pending", simulated=True)
        four = Experiment(task_id=task_id, seq=3, params={}, gpus_needed=4, state="pending", simulated=True)
        s.add_all([holder, two, four])
        s.flush()
        for gpu in s.execute(select(Gpu).where(Gpu.index.in_([1, 2]))).scalars():
            gpu.held_by = holder.id
        ids = two.id, four.id
    with session_scope() as s:
        schedule(s)
    with session_scope(readonly=True) as s:
        held = {e: sorted(s.execute(select(Gpu.index).where(Gpu.held_by == e)).scalars()) for e in ids}
    assert held == {ids[0]: [0, 3], ids[1]: [4, 5, 6, 7]}
    gpus = create_app({"TESTING": True}).test_client().get("/api/pool").json["gpus"]
    assert [g["domain"] for g in sorted(gpus, key=lambda g: g["index"])] == ["sim-d0"] * 4 + ["sim-d1"] * 4


def _empty_store() -> None:
    """Every row gone but the scheduler's lock (whose virtual time starts again)."""
    from sqlalchemy import delete, update

    from app.store.db import session_scope
    from app.store.models import Base, Lock

    with session_scope() as s:
        for table in reversed(Base.metadata.sorted_tables):
            if table is not Lock.__table__:
                s.execute(delete(table))
        s.execute(update(Lock).values(value=None))


def _reads_of_one_pass(tasks: int, needs: list[int], free: int) -> tuple[int, int]:
    """A worker of 8 GPUs with `free` of them free, `tasks` running tasks with experiments
    waiting for each of `needs` GPUs: the statements that read (SELECT / WITH) in one
    schedule(), and how many experiments it placed."""
    from sqlalchemy import event

    from app.coordinator import schedule
    from app.domain.taskspec import parse_task
    from app.store import pool
    from app.store.db import get_engine, session_scope
    from app.store.models import Experiment, Gpu, Task
    from app.task_service import create_task
    from tests.helpers import mixed_task

    specs = [pool.GpuSpec(i, "Simulated H100-80GB", 81_559, f"u{i}", True) for i in range(8)]
    pool.register_worker("w", "h-sim", "h", "gpu.h-sim", 8, specs, "inc", 1)
    ids = [create_task(parse_task(mixed_task([{"tp-size": 1}], parallel=8)), enqueue=False) for _ in range(tasks)]
    with session_scope() as s:
        for task_id in ids:
            s.get(Task, task_id).status = "running"
        holder = Experiment(task_id=ids[0], seq=1, params={}, gpus_needed=8 - free, state="running", group="h-sim",
                            attempt=1, simulated=True)
        s.add(holder)
        s.add_all(Experiment(task_id=task_id, seq=2 + i, params={}, gpus_needed=need, state="pending", simulated=True)
                  for task_id in ids for i, need in enumerate(needs * 3))
        s.flush()
        for gpu in s.execute(select(Gpu).where(Gpu.index >= free)).scalars():
            gpu.held_by = holder.id
    reads = []
    listener = lambda _c, _cur, statement, *_a: reads.append(statement)  # noqa: E731
    event.listen(get_engine(), "before_cursor_execute", listener)
    try:
        with session_scope() as s:
            placed = schedule(s)
    finally:
        event.remove(get_engine(), "before_cursor_execute", listener)
    return sum(1 for r in reads if r.lstrip().upper().startswith(("SELECT", "WITH"))), len(placed)


@pytest.mark.parametrize("free", [0, 3])
def test_a_pass_reads_the_same_few_statements_however_many_gpu_counts_and_tasks_wait(database_url, free):
    """The GPU counts waited for are found in one statement, the head of every count's queue
    is read in one, and what the planner asks of the tasks at the heads in one: one task
    waiting for one GPU count costs a pass as many reads as three tasks waiting for four."""
    small, placed_small = _reads_of_one_pass(1, [1], free)
    _empty_store()
    large, placed_large = _reads_of_one_pass(3, [1, 2, 4, 8], free)
    assert placed_small == free and (placed_large > 0) == (free > 0)
    assert large == small, (small, large)
