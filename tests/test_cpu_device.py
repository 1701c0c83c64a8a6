"""The host's CPU as a device: a worker offers it (one row of the ledger, shown as a CPU),
an engine on it is pinned to its CPUs, hidden from GPUs and given its thread count, and
an engine that needs GPUs is refused there."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from app.cli import main
from app.dispatch import queue_for
from app.domain.engines import get_engine
from app.store.models import gpu_label
from app.store.pool import GpuSpec, parse_gpu_label
from tests.helpers import ROOT
from workers.cpu_device import CPU_INDEX, CPU_SET_ENV, CpuDeviceError, cpu_device, cpu_set
from workers.gpu_worker import default_group, run_worker
from workers.runtimes.base import EngineError, EngineRequest
from workers.runtimes.docker_runtime import DockerRuntime
from workers.runtimes.process import ProcessRuntime


def on_cpu(engine: str, flags: list[str], model: str = "/m/tiny.gguf") -> EngineRequest:
    return EngineRequest(experiment_id=3, attempt=1, launcher=get_engine(engine), flavour=engine, model=model,
                         flags=flags, gpu_indices=[CPU_INDEX])


@pytest.mark.unit
def test_the_device_is_one_row_that_says_it_is_a_cpu():
    cpus = cpu_set(1)
    device = cpu_device(cpus)
    assert (device.index, device.simulated) == (CPU_INDEX, False)
    assert device.name.startswith("CPU: ") and device.name.endswith("(1 threads)")
    assert device.uuid.startswith("CPU-") and device.memory_mb > 0
    assert default_group("h1", [device]) == "h1-cpu"
    assert queue_for(default_group("h1", [device])) == "cpu.h1-cpu"  # what Flower lists
    assert queue_for(default_group("h1", [GpuSpec(0, "sim", 1, "u0", True)])) == "gpu.h1-sim-0"
    assert gpu_label("h1", device.index) == "h1:cpu" and parse_gpu_label("h1:cpu") == ("h1", CPU_INDEX)


@pytest.mark.unit
@pytest.mark.parametrize("cpu, group", [(True, "llama"), (False, "big-cpu")])
def test_a_group_name_that_would_give_the_wrong_queue_kind_is_refused(cpu, group):
    """The coordinator tells a CPU device's queue from a GPU group's by the group's name, so a
    worker's --group must agree with its devices."""
    devices = [cpu_device(cpu_set(1))] if cpu else [GpuSpec(0, "sim", 1, "u0", True)]
    with pytest.raises(SystemExit, match=f"--group {group}: a CPU device's group name ends in '-cpu'"):
        run_worker(devices, group=group, slots=None)


@pytest.mark.unit
def test_the_device_takes_only_cpus_the_host_allows():
    allowed = sorted(os.sched_getaffinity(0))
    assert cpu_set(None) == allowed
    with pytest.raises(CpuDeviceError, match="between 1 and"):
        cpu_set(len(allowed) + 1)


@pytest.mark.unit
def test_an_engine_on_the_device_gets_its_threads_unless_the_task_tunes_them(monkeypatch):
    monkeypatch.setenv(CPU_SET_ENV, "0")
    runtime = ProcessRuntime()
    argv = runtime.command(on_cpu("llamacpp", ["--parallel", "4"]), 9000)
    assert argv[-4:] == ["--parallel", "4", "--threads", "1"]
    argv = runtime.command(on_cpu("llamacpp", ["--threads", "2"]), 9000)
    assert argv.count("--threads") == 1 and argv[-2:] == ["--threads", "2"]
    assert runtime.environment(on_cpu("llamacpp", []))["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.unit
def test_an_engine_that_needs_gpus_is_refused_on_the_device(monkeypatch):
    monkeypatch.setenv(CPU_SET_ENV, "0")
    with pytest.raises(EngineError) as exc:
        ProcessRuntime().command(on_cpu("vllm", []), 9000)
    assert exc.value.kind == "invalid_argument" and "needs GPUs" in str(exc.value)
    with pytest.raises(EngineError, match="process runtime"):
        DockerRuntime(client=object(), allowed_images=["ghcr.io/ggml-org/llama.cpp"]).start(on_cpu("llamacpp", []))


@pytest.mark.unit
@pytest.mark.parametrize("args,message", [
    (["--cpu", "--gpus", "0"], "exactly one of"),
    (["--cpu-threads", "2", "--simulated-gpus", "2"], "--cpu-threads goes with --cpu"),
    (["--cpu", "--slots-per-gpu", "2"], "a CPU device is not split"),
    (["--cpu", "--cpu-threads", "100000"], "--cpu-threads must be between 1 and"),
])
def test_bad_worker_options_are_one_line(args, message):
    result = CliRunner().invoke(main, ["worker", *args])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.process
def test_the_engine_runs_on_the_devices_cpus_only(llama_server_binary, tiny_gguf, monkeypatch):
    first = sorted(os.sched_getaffinity(0))[0]
    monkeypatch.setenv(CPU_SET_ENV, str(first))
    monkeypatch.setenv("AUTOTUNER_LLAMA_SERVER", str(llama_server_binary))
    runtime = ProcessRuntime()
    deployment = runtime.start(on_cpu("llamacpp", ["--ctx-size", "512"], model=str(tiny_gguf)))
    try:
        runtime.wait_ready(deployment, timeout=60)
        supervisor = deployment.handle.proc.pid
        (engine,) = [int(p) for p in open(f"/proc/{supervisor}/task/{supervisor}/children").read().split()]
        status = dict(line.split(":\t", 1) for line in open(f"/proc/{engine}/status").read().splitlines()
                      if ":\t" in line)
        assert status["Cpus_allowed_list"].strip() == str(first)
        cmdline = open(f"/proc/{engine}/cmdline").read().split("\0")
        assert cmdline[cmdline.index("--threads") + 1] == "1"
        assert "CUDA_VISIBLE_DEVICES=\0" in open(f"/proc/{engine}/environ").read() + "\0"
    finally:
        runtime.stop(deployment)


@pytest.mark.integration
def test_autotuner_run_tunes_llama_cpp_on_this_hosts_cpu(llama_server_binary, tiny_gguf, tmp_path):
    """`autotuner run --cpu`: a real llama-server per experiment, one at a time, on the CPU
    device the embedded worker offers; the pool shows that device."""
    task = json.loads((ROOT / "examples" / "llamacpp-cpu.json").read_text())
    task["model"]["id_or_path"] = str(tiny_gguf)
    task["parameters"] = {"parallel": [1, 4], "ctx-size": [2048]}
    task["benchmark"].update(num_concurrency=[4], max_requests_per_iteration=16)
    task["optimization"]["repeats"] = 0  # two experiments are enough to show the path
    (tmp_path / "task.json").write_text(json.dumps(task))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(AUTOTUNER_HOME=str(tmp_path / "home"), AUTOTUNER_LLAMA_SERVER=str(llama_server_binary))
    proc = subprocess.run([sys.executable, "-m", "app.cli", "run", "--cpu", str(tmp_path / "task.json"), "--json"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "completed" and report["simulated"] is False
    assert report["counts"]["succeeded"] == 2
    assert all(exp["gpus"] == [f"{exp['host']}:cpu"] for exp in report["experiments"])
    assert report["best"]["launch_command"][1:3] == ["--model", str(tiny_gguf)]


@pytest.mark.unit
def test_a_pool_holds_cpu_devices_or_gpus_not_both(db):
    from app.store.pool import PoolConflict, register_worker

    register_worker("w-cpu@h1", "h1-cpu", "h1", "cpu.h1-cpu", 1, [cpu_device([0])], "inc1", 1)
    register_worker("w-cpu@h2", "h2-cpu", "h2", "cpu.h2-cpu", 1, [cpu_device([0])], "inc2", 1)  # CPUs join CPUs
    with pytest.raises(PoolConflict, match="offers a CPU device; a worker offering GPUs cannot join"):
        register_worker("w-gpu@h3", "g", "h3", "gpu.g", 1, [GpuSpec(0, "sim", 1, "u0", True)], "inc3", 1)
