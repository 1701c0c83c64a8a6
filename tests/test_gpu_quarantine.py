"""Pre-launch GPU check through NVML (faked at the `pynvml` boundary): a GPU that another
process is using is quarantined and the experiment placed again, never failed; the
quarantine shows in the pool API and is cleared by its worker or by an operator."""
from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from app.cli import main as cli
from app.coordinator import coordinate
from app.store.db import session_scope
from app.store.models import Attempt, Experiment, Gpu, Task, utcnow
from app.store.pool import GpuSpec, register_worker
from app.task_service import create_task
from app.domain.taskspec import parse_task
from tests.helpers import mixed_task
from workers import gpu_discovery
from workers.gpu_discovery import busy_gpus

pytestmark = pytest.mark.unit

pynvml = gpu_discovery.pynvml
GIB = 2**30
HOST = socket.gethostname()


class BusyNvml:
    """Two 80 GiB GPUs; `foreign[i]` lists pids of compute processes on GPU i and `used[i]`
    its memory in use. Records every call so the test can check what was asked."""

    def __init__(self) -> None:
        self.foreign: dict[int, list[int]] = {0: [], 1: []}
        self.used: dict[int, int] = {0: 0, 1: 0}
        self.calls: list[tuple] = []

    def install(self, monkeypatch) -> None:
        for name in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetMemoryInfo",
                     "nvmlDeviceGetComputeRunningProcesses"):
            monkeypatch.setattr(pynvml, name, getattr(self, name))

    def nvmlInit(self):
        self.calls.append(("init",))

    def nvmlShutdown(self):
        self.calls.append(("shutdown",))

    def nvmlDeviceGetHandleByIndex(self, i):
        self.calls.append(("handle", i))
        return i

    def nvmlDeviceGetMemoryInfo(self, i):
        return SimpleNamespace(total=80 * GIB, used=self.used[i], free=80 * GIB - self.used[i])

    def nvmlDeviceGetComputeRunningProcesses(self, i):
        return [SimpleNamespace(pid=p, usedGpuMemory=GIB) for p in self.foreign[i]]


@pytest.fixture
def nvml(monkeypatch) -> BusyNvml:
    fake = BusyNvml()
    fake.install(monkeypatch)
    return fake


def test_busy_means_foreign_processes_or_memory_in_use(nvml):
    assert busy_gpus([0, 1], 0.9) == {}
    nvml.foreign[1] = [4242]
    nvml.used[0] = 20 * GIB
    assert busy_gpus([0, 1], 0.9) == {
        0: "GPU 0: 20480 MiB of 81920 MiB in use",
        1: "GPU 1: 1 compute process(es) running (pid 4242)",
    }
    assert busy_gpus([0], 0.7) == {}  # 75 % free is enough when the operator says 70 %
    assert ("handle", 0) in nvml.calls and nvml.calls[-1] == ("shutdown",)


def test_no_nvml_means_nothing_to_check(monkeypatch):
    def missing():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", missing)
    assert busy_gpus([0], 0.9) == {}


def test_busy_gpu_is_quarantined_and_the_experiment_placed_again(db, nvml, monkeypatch):
    from app import create_app
    from workers.experiment_job import execute

    monkeypatch.setenv("AUTOTUNER_WORKER_DEAD_AFTER", "60")
    register_worker("gpu-real@h", "real", HOST, "gpu.real", 2,
                    [GpuSpec(i, "NVIDIA H100", 81920, f"GPU-{i}", False) for i in range(2)], "inc", 1)
    task_id = create_task(parse_task(mixed_task([{"tp-size": 1}], parallel=1)), enqueue=False)
    (first,) = coordinate(task_id)
    with session_scope() as s:
        (placed,) = s.get(Experiment, first.experiment_id).gpus
    index = int(str(placed).rsplit(":", 1)[-1]) if isinstance(placed, str) else placed
    nvml.foreign[index] = [31337]

    assert execute(first.experiment_id, first.attempt, worker="gpu-real@h", host=HOST) == "replanned"
    with session_scope() as s:
        exp = s.get(Experiment, first.experiment_id)
        gpu = s.execute(select(Gpu).where(Gpu.index == index)).scalar_one()
        (att,) = s.execute(select(Attempt)).scalars().all()
        assert exp.state == "pending" and "busy before launch" in exp.wait_reason and exp.error is None
        assert att.state == "replanned" and att.engine is None and att.engine_gone_at is not None
        assert gpu.quarantined_at is not None and "pid 31337" in gpu.quarantine_reason
        assert gpu.held_by is None and gpu.fenced_by is None

    # Placed again, on the other GPU; the quarantined one is not offered.
    (second,) = coordinate(task_id)
    assert second.attempt == 2
    with session_scope() as s:
        assert s.get(Experiment, second.experiment_id).gpus != [placed]

    # The pool API shows it; the operator clears it through the API and the CLI.
    client = create_app({"TESTING": True}).test_client()
    gpu_json = next(g for g in client.get("/api/pool").json["gpus"] if g["index"] == index)
    assert "pid 31337" in gpu_json["quarantine_reason"]
    assert client.post(f"/api/gpus/{HOST}:{index}/clear-quarantine").json == {
        "gpu": f"{HOST}:{index}", "quarantined": False}
    assert client.post("/api/gpus/nohost:9/clear-quarantine").status_code == 404
    assert client.post("/api/gpus/not-a-label/clear-quarantine").status_code == 422
    result = CliRunner().invoke(cli, ["gpus", "clear", f"{HOST}:7"])
    assert result.exit_code == 1 and "is not registered" in result.output
    assert CliRunner().invoke(cli, ["gpus", "clear", f"{HOST}:{index}"]).output == f"GPU {HOST}:{index}: quarantine cleared\n"
    with session_scope() as s:
        assert s.execute(select(Gpu).where(Gpu.quarantined_at.is_not(None))).first() is None


@pytest.mark.parametrize("fault", ["gpu check", "stored spec"])
def test_a_fault_between_claim_and_launch_ends_the_attempt_and_frees_its_gpus(db, nvml, monkeypatch, fault):
    """The claim commits `running` and holds the GPUs: whatever raises after it (the NVML
    check, the spec read back from the store) must end the attempt, not strand it until the
    reaper's timeout."""
    from workers.experiment_job import execute

    register_worker("gpu-real@h", "real", HOST, "gpu.real", 2,
                    [GpuSpec(i, "NVIDIA H100", 81920, f"GPU-{i}", False) for i in range(2)], "inc", 1)
    task_id = create_task(parse_task(mixed_task([{"tp-size": 1}], parallel=1)), enqueue=False)
    (first,) = coordinate(task_id)
    if fault == "gpu check":
        def broken(_handle):
            raise RuntimeError("driver went away")

        monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", broken)
    else:
        with session_scope() as s:
            s.get(Task, task_id).spec = {**s.get(Task, task_id).spec, "deployment_mode": "nonsense"}

    assert execute(first.experiment_id, first.attempt, worker="gpu-real@h", host=HOST) == "failed"
    with session_scope() as s:
        exp = s.get(Experiment, first.experiment_id)
        (att,) = s.execute(select(Attempt)).scalars().all()
        assert (exp.state, exp.failure_kind, att.state) == ("failed", "internal", "failed")
        assert "driver went away" in exp.error if fault == "gpu check" else "deployment_mode" in exp.error
        assert s.execute(select(Gpu).where(Gpu.held_by.is_not(None) | Gpu.fenced_by.is_not(None))).first() is None


def test_the_worker_clears_a_quarantine_once_the_gpu_is_free(db, nvml):
    from workers.gpu_worker import _Membership

    register_worker("gpu-real@h", "real", HOST, "gpu.real", 2,
                    [GpuSpec(i, "NVIDIA H100", 81920, f"GPU-{i}", False) for i in range(2)], "inc", 1)
    with session_scope() as s:
        for gpu in s.execute(select(Gpu)).scalars():
            gpu.quarantined_at, gpu.quarantine_reason = utcnow(), "test"
    member = _Membership("gpu-real@h", "real", 2, [GpuSpec(i, "NVIDIA H100", 81920, f"GPU-{i}", False)
                                                   for i in range(2)], lambda: {})
    nvml.foreign[1] = [99]
    member.release_quarantine()
    with session_scope() as s:
        assert [g.index for g in s.execute(select(Gpu).where(Gpu.quarantined_at.is_not(None))).scalars()] == [1]
    nvml.foreign[1] = []
    member.release_quarantine()
    with session_scope() as s:
        assert s.execute(select(Gpu).where(Gpu.quarantined_at.is_not(None))).first() is None
