"""The host's CPU as a device of the pool.

Why: llama.cpp's llama-server runs on CPUs, so a machine without GPUs can still run real
experiments. A worker started with `--cpu` registers one device for (part of) its host's
CPU: the ledger holds it like a GPU, so experiments on it are placed, queued, handed over
and fenced like any other, and one experiment at a time uses it (the worker's default; the
engine is pinned to the device's CPUs by its supervisor, so it never takes the host's other
cores). Its row says what it is: index CPU_INDEX (label `<host>:cpu`), uuid `CPU-<host>`, name
`CPU: <model> (<n> threads)`, group `<host>-cpu` (queue `cpu.<host>-cpu`). A pool is made of
CPU devices or of GPUs, not both (app.store.pool refuses the second kind while the first is
online): placement counts devices without telling them apart.

The worker process tells the runtime its device's CPUs through CPU_SET_ENV, so an engine it
starts on the CPU device gets exactly those (and, unless the task sets one, as many threads:
EngineSpec.threads_flag).
"""
from __future__ import annotations

import os

from app.config import host_name
from app.store.pool import CPU_INDEX, GpuSpec

__all__ = ["CPU_INDEX", "CPU_SET_ENV", "CpuDeviceError", "cpu_device", "cpu_set", "device_cpus"]

#: The worker's CPU device's CPUs, e.g. "0,1", for the runtime in its pool processes.
CPU_SET_ENV = "AUTOTUNER_CPU_SET"


class CpuDeviceError(Exception):
    """The CPU device asked for cannot be offered; the message is shown to the user."""


def _model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown model"


def cpu_set(threads: int | None) -> list[int]:
    """The first `threads` CPUs this process may run on (all of them by default)."""
    allowed = sorted(os.sched_getaffinity(0))
    if threads is None:
        return allowed
    if not 1 <= threads <= len(allowed):
        raise CpuDeviceError(f"--cpu-threads must be between 1 and {len(allowed)} (the CPUs this host lets "
                             f"the worker use), got {threads}")
    return allowed[:threads]


def cpu_device(cpus: list[int]) -> GpuSpec:
    """The ledger row of a CPU device made of `cpus`; memory is the host's RAM."""
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return GpuSpec(index=CPU_INDEX, name=f"CPU: {_model_name()} ({len(cpus)} threads)", memory_mb=memory_mb,
                   uuid=f"CPU-{host_name()}", simulated=False)


def device_cpus() -> list[int] | None:
    """The CPUs of this worker's CPU device (from CPU_SET_ENV), or None on a GPU worker."""
    raw = os.environ.get(CPU_SET_ENV)
    return [int(c) for c in raw.split(",")] if raw else None
