"""Slots per GPU: a worker started with --slots-per-gpu N lends each GPU to N engines, each
told to use 1/N of its memory; an experiment needing k GPUs gets slots of k different GPUs.

Planner and engine arguments are unit-tested; the ledger on both databases; the whole path
with a real worker process, coordinator, Redis and simulated engines over HTTP."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st
from sqlalchemy import select

from app.domain.engines.registry import builtin_engines, _operator_engine
from app.domain.placement import FreeGpu, GroupState, pick_gpus, plan
from tests.helpers import migration_config, mixed_task, run_to_end, schema_diff, start_stack, submit

GIB = 2**30


# -- the planner ----------------------------------------------------------------------------------

def slotted(gpus: int, slots: int, busy: set[tuple[int, int]] = frozenset()) -> list[FreeGpu]:
    """Free rows of `gpus` GPUs split `slots` ways, ids in (index, slot) order."""
    return [FreeGpu(id=i * slots + s + 1, index=i) for i in range(gpus) for s in range(slots) if (i, s) not in busy]


@pytest.mark.unit
def test_a_multi_gpu_experiment_gets_slots_of_different_gpus():
    taken = pick_gpus(slotted(4, 2), 2)
    assert len({g.index for g in taken}) == 2


@pytest.mark.unit
def test_slots_are_spread_over_the_emptiest_gpus():
    # GPU 1 already runs an engine in one of its slots: the next 1-GPU experiment takes a GPU
    # of its own (measured without a neighbour).
    (taken,) = pick_gpus(slotted(2, 2, busy={(0, 0)}), 1)
    assert taken.index == 1


@pytest.mark.unit
def test_a_group_with_free_slots_on_too_few_gpus_cannot_host():
    # Four free slots, all on GPU 0 and GPU 1: room for a 2-GPU experiment, not for a 3-GPU one.
    group = GroupState("g", total_gpus=4, slots=16, busy_slots=4,
                       free=slotted(4, 2, busy={(2, 0), (2, 1), (3, 0), (3, 1)}))
    assert group.can_host(2) and not group.can_host(3)


@pytest.mark.unit
@settings(max_examples=200, deadline=None)
@given(gpus=st.integers(1, 6), slots=st.integers(1, 4), needs=st.lists(st.integers(1, 4), min_size=1, max_size=12),
       busy=st.sets(st.tuples(st.integers(0, 5), st.integers(0, 3)), max_size=10))
def test_plans_never_give_one_experiment_two_slots_of_a_gpu(gpus, slots, needs, busy):
    free = slotted(gpus, slots, busy)
    group = GroupState("g", total_gpus=gpus, slots=gpus * slots, busy_slots=0, free=list(free))
    queues: dict[int, list] = {}
    from app.domain.placement import Waiting

    for n, need in enumerate(needs):
        queues.setdefault(need, []).append(Waiting(key=n, experiment_id=n + 1))
    result = plan(queues, [group], {"g": gpus})
    index_of = {g.id: g.index for g in free}
    granted = [gid for p in result.placements for gid in p.gpu_ids]
    assert len(granted) == len(set(granted)) and set(granted) <= set(index_of)  # each row once, only free rows
    for p in result.placements:
        assert len(p.gpu_ids) == needs[p.experiment_id - 1]
        assert len({index_of[i] for i in p.gpu_ids}) == len(p.gpu_ids)
    # Work-conserving: the first experiment not placed could not have been.
    placed = {p.experiment_id for p in result.placements}
    for exp_id in sorted(set(range(1, len(needs) + 1)) - placed):
        if needs[exp_id - 1] <= gpus:
            left = {index_of[i] for i in set(index_of) - set(granted)}
            assert len(left) < needs[exp_id - 1] or exp_id in result.waiting
        break


# -- what the engine is told ----------------------------------------------------------------------

@pytest.mark.unit
def test_the_celery_pool_has_a_spare_process_per_four_slots():
    from workers.gpu_worker import pool_size

    assert [pool_size(n) for n in (1, 2, 4, 5, 8, 16)] == [2, 3, 5, 7, 10, 20]


@pytest.mark.unit
def test_memory_fraction_is_scaled_to_the_slot():
    sglang, vllm = builtin_engines()["sglang"], builtin_engines()["vllm"]
    assert sglang.on_gpu_share({"tp-size": 1}, 0.5) == {"tp-size": 1, "mem-fraction-static": 0.44}
    assert sglang.on_gpu_share({"mem-fraction-static": 0.8}, 0.25) == {"mem-fraction-static": 0.2}
    assert vllm.on_gpu_share({}, 0.5) == {"gpu-memory-utilization": 0.45}
    assert vllm.on_gpu_share({"max-num-seqs": 8}, 1.0) == {"max-num-seqs": 8}  # a whole GPU: untouched


@pytest.mark.unit
def test_an_engine_without_a_memory_flag_cannot_share_a_gpu():
    custom = _operator_engine("echo", {"command": ["echo", "{model}", "{host}", "{port}"]}, None)
    with pytest.raises(ValueError, match="cannot share a GPU"):
        custom.on_gpu_share({}, 0.5)
    told = _operator_engine("echo", {"command": ["echo", "{model}", "{host}", "{port}"],
                                     "memory_fraction_flag": "--mem", "memory_fraction_default": 0.8}, None)
    assert told.on_gpu_share({}, 0.5) == {"mem": 0.4}


@pytest.mark.unit
def test_the_launch_argv_carries_the_slots_fraction():
    from app.domain.taskspec import parse_task
    from workers.experiment_job import engine_request

    spec = parse_task(mixed_task([{"tp-size": 2, "mem-fraction-static": 0.8}]))
    request = engine_request(spec, 1, 1, {"tp-size": 2, "mem-fraction-static": 0.8}, [0, 1], gpu_share=0.5)
    assert request.flags[request.flags.index("--mem-fraction-static") + 1] == "0.4"
    assert request.flags[request.flags.index("--tp-size") + 1] == "2"


# -- the pre-launch check with other slots' engines running ------------------------------------------

class SharedNvml:
    """One 80 GiB GPU with `used` bytes in use and `pids` compute processes on it."""

    def __init__(self, used: int, pids: list[int]) -> None:
        self.used, self.pids, self.calls = used, pids, []

    def install(self, monkeypatch) -> None:
        from workers import gpu_discovery

        for name in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetMemoryInfo",
                     "nvmlDeviceGetComputeRunningProcesses"):
            monkeypatch.setattr(gpu_discovery.pynvml, name, getattr(self, name))

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetHandleByIndex(self, i):
        self.calls.append(f"handle {i}")
        return i

    def nvmlDeviceGetMemoryInfo(self, i):
        return SimpleNamespace(total=80 * GIB, used=self.used, free=80 * GIB - self.used)

    def nvmlDeviceGetComputeRunningProcesses(self, i):
        return [SimpleNamespace(pid=p, usedGpuMemory=GIB) for p in self.pids]


@pytest.mark.unit
def test_a_slot_tolerates_its_neighbours_engine_but_not_a_full_gpu(monkeypatch):
    from workers.gpu_discovery import busy_gpus

    neighbour = SharedNvml(used=36 * GIB, pids=[4242])  # the other slot's engine: 0.45 of 80 GiB
    neighbour.install(monkeypatch)
    assert busy_gpus([0], 0.9) == {0: "GPU 0: 1 compute process(es) running (pid 4242), 36864 MiB of 81920 MiB in use"}
    assert busy_gpus([0], 0.9, share=0.5) == {}
    assert neighbour.calls == ["init", "handle 0", "shutdown"] * 2
    hog = SharedNvml(used=60 * GIB, pids=[4242])  # someone took more than their half
    hog.install(monkeypatch)
    assert busy_gpus([0], 0.9, share=0.5) == {0: "GPU 0: 61440 MiB of 81920 MiB in use"}


# -- the ledger ----------------------------------------------------------------------------------------

def _register(slots_per_gpu: int, incarnation: str) -> None:
    from app.store.pool import GpuSpec, register_worker

    register_worker("gpu-g@h", "g", "h", "gpu.g", 2 * slots_per_gpu,
                    [GpuSpec(i, "Simulated H200", 143771, f"u{i}", True) for i in range(2)], incarnation, 1,
                    slots_per_gpu=slots_per_gpu)


@pytest.mark.integration
def test_ledger_rows_per_slot_and_retired_slots(database_url, monkeypatch):
    from app.coordinator import coordinate
    from app.serializers import pool_dict
    from app.store import ledger
    from app.store.db import session_scope
    from app.store.models import Experiment, Gpu
    from app.store.pool import heartbeat

    monkeypatch.setenv("AUTOTUNER_WORKER_DEAD_AFTER", "60")
    _register(2, "first")
    with session_scope() as s:
        rows = s.execute(select(Gpu).order_by(Gpu.index, Gpu.slot)).scalars().all()
        assert [(g.label, g.share) for g in rows] == [("h:0/0", 0.5), ("h:0/1", 0.5), ("h:1/0", 0.5), ("h:1/1", 0.5)]
        groups, capacity = ledger.group_states(s)
        assert capacity == {"g": 2} and groups[0].total_gpus == 2 and len(groups[0].free) == 4
        page = pool_dict(s)
        assert [(g["label"], g["gpu"], g["slot"], g["slots"]) for g in page["gpus"]][:2] == [
            ("h:0/0", "h:0", 0, 2), ("h:0/1", "h:0", 1, 2)]

    # 1-GPU, 1-GPU, 2-GPU, 1-GPU on 2 GPUs x 2 slots: the first two get a GPU each, the
    # 2-GPU one the second slot of both, the last one waits for a slot.
    task_id = submit(mixed_task([{"tp-size": 1}, {"tp-size": 1}, {"tp-size": 2}, {"tp-size": 1}], parallel=4))
    assert len(coordinate(task_id)) == 3
    with session_scope() as s:
        exps = s.execute(select(Experiment).where(Experiment.task_id == task_id).order_by(Experiment.seq)).scalars().all()
        assert [sorted(e.gpus) for e in exps] == [["h:0/0"], ["h:1/0"], ["h:0/1", "h:1/1"], []]
        assert exps[3].state == "pending"



@pytest.mark.integration
def test_slots_of_a_wider_split_are_retired_when_the_worker_restarts_with_fewer(database_url, monkeypatch):
    from app.store import ledger
    from app.store.db import session_scope
    from app.store.models import Gpu
    from app.store.pool import heartbeat

    monkeypatch.setenv("AUTOTUNER_WORKER_DEAD_AFTER", "60")
    _register(2, "first")
    _register(1, "second")
    assert heartbeat("gpu-g@h", "second")
    with session_scope() as s:
        rows = s.execute(select(Gpu).order_by(Gpu.index, Gpu.slot)).scalars().all()
        assert [(g.label, g.online) for g in rows] == [("h:0", True), ("h:0/1", False), ("h:1", True), ("h:1/1", False)]
        (group,), _ = ledger.group_states(s)
        retired = {g.id for g in rows if g.slot == 1}
        assert {f.id for f in group.free} == {g.id for g in rows} - retired  # never handed out again


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_keeps_existing_gpus_as_single_slots(kind, request):
    """0008 -> 0009 -> 0008 -> 0009 on a store that already has a GPU; the schema then matches
    the models (autogenerate finds nothing to add or drop on the GPU table)."""
    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    engine, cfg = migration_config(request, kind)
    command.upgrade(cfg, "0008")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO gpus (host, \"index\", \"group\", worker, name, memory_mb, uuid, simulated, online)"
                          " VALUES ('h', 0, 'g', 'w', 'H200', 143771, 'u0', false, true)"))
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "0008")
    command.upgrade(cfg, "head")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT host, \"index\", slot, slots FROM gpus")).all() == [("h", 0, 0, 1)]
        conn.execute(text("INSERT INTO gpus (host, \"index\", slot, slots, \"group\", worker, name, memory_mb, uuid,"
                          " simulated, online) VALUES ('h', 0, 1, 2, 'g', 'w', 'H200', 143771, 'u0', false, true)"))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("INSERT INTO gpus (host, \"index\", slot, \"group\", worker, name, memory_mb, uuid,"
                          " simulated, online) VALUES ('h', 0, 1, 'g', 'w', 'H200', 143771, 'u0', false, true)"))
    assert schema_diff(engine, "gpus") == []


@pytest.mark.integration
def test_two_engines_share_one_gpu_end_to_end(stack):
    """A real worker process with one simulated GPU split in two: both experiments are placed
    on it at once, each engine is started with half the memory fraction, both succeed, and the
    GPU's slots are all free afterwards."""
    from app.store.db import session_scope
    from app.store.models import Experiment, Gpu, GpuAllocation

    start_stack(stack, workers=[["--simulated-gpus", "1", "--slots-per-gpu", "2"]])
    task_id = run_to_end(stack, mixed_task([{"tp-size": 1}, {"tp-size": 1, "mem-fraction-static": 0.8}], parallel=2))
    with session_scope() as s:
        exps = s.execute(select(Experiment).where(Experiment.task_id == task_id).order_by(Experiment.seq)).scalars().all()
        assert [e.state for e in exps] == ["succeeded", "succeeded"], [(e.error, e.engine_log) for e in exps]
        assert sorted(label.rsplit(":", 1)[1] for e in exps for label in e.gpus) == ["0/0", "0/1"]
        assert [e.metrics["gpu_share"] for e in exps] == [0.5, 0.5]
        assert "mem_fraction=0.44 " in exps[0].engine_log  # SGLang's default 0.88, halved
        assert "mem_fraction=0.4 " in exps[1].engine_log  # the task's 0.8, halved
        # Both slots were granted in one pass: their holds overlap on the one physical GPU.
        holds = s.execute(select(GpuAllocation.allocated_at, GpuAllocation.released_at)
                          .join(Gpu, Gpu.id == GpuAllocation.gpu_id).where(Gpu.index == 0)).all()
        assert len(holds) == 2
        (a_start, a_end), (b_start, b_end) = holds
        assert a_start < b_end and b_start < a_end
        assert s.execute(select(Gpu).where(Gpu.held_by.is_not(None))).first() is None
