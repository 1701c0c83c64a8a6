"""CPU cost of starting one simulated engine the way a worker does: the process runtime starts
it under its supervisor, waits until it answers /health, then stops it.

    python benchmarks/engine_start.py [--engines 20] [--json]

Why: the scheduling benchmarks start many short engines on a 2-core machine; every CPU-second an
engine start costs is taken from the control plane being measured. Both ways are measured in one
run, one engine at a time so that each start's cost is its own:

- `spawn` (before): `python -I supervisor.py -- python -m app.tools.simengine ...`, the way every
  other process engine starts; CPU from `RUSAGE_CHILDREN` (the engine is waited for by its
  supervisor, the supervisor by us);
- `fork` (now, what the process runtime does for the simulator): forked by this process's fork
  server; CPU is the fork server's own plus its reaped children's (/proc/<pid>/stat: utime,
  stime, cutime, cstime: supervisor and engine are waited for by their parents) plus this
  process's CPU inside `start()` (the request). The fork server's one-off start (it imports the
  simulator once per worker process) is reported separately.

Per start: CPU seconds from `start()` until the engine has answered /health and been stopped
(the mean: the kernel counts children's CPU in 10 ms ticks), and the wall time from `start()`
to healthy.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.domain.taskspec import parse_task  # noqa: E402
from workers.experiment_job import engine_request  # noqa: E402
from workers.runtimes import forkserver  # noqa: E402
from workers.runtimes.process import ProcessRuntime  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _task() -> dict:
    return {"task_name": "engine-start", "base_runtime": "sim", "model": {"id_or_path": "llama-3-8b"},
            "sim": {"time_scale": 0.1, "startup_seconds": 0}, "parameters": {},
            "optimization": {"strategy": "list", "configs": [{}], "objective": "maximize_throughput"},
            "benchmark": {"traffic_scenarios": ["D(64,16)"], "num_concurrency": [1], "max_requests_per_iteration": 1}}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _server_cpu() -> float:
    """CPU seconds of this process's fork server and its reaped descendants (0 before it exists)."""
    server = forkserver._client
    if server is None:
        return 0.0
    with open(f"/proc/{server.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / TICK  # utime stime cutime cstime


def measure(way: str, n: int) -> dict:
    """`n` starts after a first one (for `fork`: the one that starts the fork server)."""
    spec = parse_task(_task())
    runtime = ProcessRuntime(name="sim")
    if way == "spawn":
        runtime._fork = lambda *_: None  # the way every other process engine starts
    cpu, ready = [], []
    for i in range(n + 1):
        before, t0 = _children_cpu() + _server_cpu(), time.perf_counter()
        own = time.process_time()
        deployment = runtime.start(engine_request(spec, i + 1, 1, {}, [0]))
        own = time.process_time() - own
        try:
            runtime.wait_ready(deployment, timeout=60, poll_interval=0.002)
            ready.append(time.perf_counter() - t0)
        finally:
            runtime.stop(deployment)
        cpu.append(_children_cpu() + _server_cpu() - before + (own if way == "fork" else 0.0))
    return {"way": way, "engines": n, "first_start_cpu_s": cpu[0], "cpu_s_per_start_mean": statistics.fmean(cpu[1:]),
            "cpu_s_per_start_max": max(cpu[1:]), "ready_s_median": statistics.median(ready[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [measure("spawn", args.engines), measure("fork", args.engines)]
    if args.json:
        print(json.dumps(rows))
        return
    for r in rows:
        print(f"{r['way']:5s}: {r['engines']} engine starts, CPU {r['cpu_s_per_start_mean'] * 1e3:.1f} ms per start "
              f"(mean; max {r['cpu_s_per_start_max'] * 1e3:.1f} ms; the first {r['first_start_cpu_s'] * 1e3:.0f} ms), "
              f"healthy after {r['ready_s_median'] * 1e3:.0f} ms (median)")


if __name__ == "__main__":
    main()
