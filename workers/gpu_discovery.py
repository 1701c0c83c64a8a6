"""Find the GPUs a worker may hand out, through NVML (or pretend to, for simulation).

The worker registers these GPUs with the ledger at start-up and reports their live
utilization in heartbeats. NVML is read directly (not `nvidia-smi`) so there is no
output to parse and errors come back as typed exceptions. Hosts without an NVIDIA
driver get a clear error pointing at `--simulated-gpus`, instead of a stack trace.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from app.config import host_name

try:  # nvidia-ml-py is a dependency, but keep import-time failures out of CLI help etc.
    import pynvml
except ImportError:  # pragma: no cover - exercised only on broken installs
    pynvml = None  # type: ignore[assignment]


class GpuDiscoveryError(Exception):
    """GPUs could not be discovered; the message is shown to the user."""


@dataclass
class GpuInfo:
    index: int
    name: str
    memory_mb: int
    uuid: str
    simulated: bool
    utilization: float | None = None  # percent, 0-100, at discovery time
    pci_bus_id: str | None = None
    domain: str | None = None  # GPUs of one domain talk over NVLink or one PCIe switch; None: unknown


SIMULATED_PRESETS: dict[str, int] = {
    "A100-80GB": 81920,
    "H100-80GB": 81920,
    "H200": 143771,
}


def _text(value: Any) -> str:
    """Older pynvml returns bytes, newer returns str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _nvml_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError,)
    if pynvml is not None:
        errors += (pynvml.NVMLError,)
    return errors


@contextmanager
def _nvml() -> Iterator[Any]:
    """nvmlInit ... nvmlShutdown, turning "no driver" into GpuDiscoveryError."""
    if pynvml is None:
        raise GpuDiscoveryError(
            "NVML is not available on this host (no NVIDIA driver?): nvidia-ml-py is not "
            "installed; use --simulated-gpus N to run with simulated GPUs"
        )
    try:
        pynvml.nvmlInit()
    except _nvml_errors() as exc:
        raise GpuDiscoveryError(
            f"NVML is not available on this host (no NVIDIA driver?): {exc}; "
            "use --simulated-gpus N to run with simulated GPUs"
        ) from exc
    try:
        yield pynvml
    finally:
        try:
            pynvml.nvmlShutdown()
        except _nvml_errors():
            pass


def _check_indices(indices: list[int] | None, count: int) -> list[int]:
    if indices is None:
        return list(range(count))
    seen: set[int] = set()
    for i in indices:
        if i < 0 or i >= count:
            raise GpuDiscoveryError(
                f"GPU index {i} does not exist on this host; found {count} GPU(s)"
                + (f" (valid indices 0-{count - 1})" if count else "")
            )
        if i in seen:
            raise GpuDiscoveryError(f"GPU index {i} is listed more than once")
        seen.add(i)
    return list(indices)


def _optional(fn: Any, *args: Any) -> Any:
    """Utilization and PCI info are nice-to-have; some GPUs/vGPUs refuse them."""
    try:
        return fn(*args)
    except _nvml_errors():
        return None


def discover_gpus(indices: list[int] | None = None) -> list[GpuInfo]:
    """The host's GPUs (all, or only `indices`), in the order asked for."""
    with _nvml() as nv:
        try:
            count = int(nv.nvmlDeviceGetCount())
            wanted = _check_indices(indices, count)
            gpus: list[GpuInfo] = []
            handles = []
            for i in wanted:
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                handles.append(handle)
                util = _optional(nv.nvmlDeviceGetUtilizationRates, handle)
                pci = _optional(nv.nvmlDeviceGetPciInfo, handle)
                gpus.append(
                    GpuInfo(
                        index=i,
                        name=_text(nv.nvmlDeviceGetName(handle)),
                        memory_mb=int(nv.nvmlDeviceGetMemoryInfo(handle).total) // (1024 * 1024),
                        uuid=_text(nv.nvmlDeviceGetUUID(handle)),
                        simulated=False,
                        utilization=float(util.gpu) if util is not None else None,
                        pci_bus_id=_text(pci.busId) if pci is not None else None,
                    )
                )
            for gpu, domain in zip(gpus, _domains(nv, handles)):
                gpu.domain = domain
            return gpus
        except _nvml_errors() as exc:
            raise GpuDiscoveryError(f"NVML query failed: {exc}") from exc


def _domains(nv: Any, handles: list[Any]) -> list[str | None]:
    """Split the GPUs into domains: two GPUs share one when NVML reports an NVLink path between
    them or a common ancestor no higher than a PCIe switch (NVML_TOPOLOGY_MULTIPLE). A
    multi-GPU engine whose GPUs share a domain does not cross the CPU's host bridge. All None
    when the driver cannot tell (then placement ignores topology)."""
    parent = list(range(len(handles)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    try:
        for i in range(len(handles)):
            for j in range(i + 1, len(handles)):
                level = nv.nvmlDeviceGetTopologyCommonAncestor(handles[i], handles[j])
                nvlink = _optional(nv.nvmlDeviceGetP2PStatus, handles[i], handles[j], nv.NVML_P2P_CAPS_INDEX_NVLINK)
                if nvlink == nv.NVML_P2P_STATUS_OK or level <= nv.NVML_TOPOLOGY_MULTIPLE:
                    parent[root(j)] = root(i)
    except (*_nvml_errors(), AttributeError):
        return [None] * len(handles)
    names: dict[int, str] = {}
    return [names.setdefault(root(i), f"d{len(names)}") for i in range(len(handles))]


def simulated_gpus(count: int, preset: str = "H100-80GB", first_index: int = 0, domains: int = 1) -> list[GpuInfo]:
    """Fake GPUs for running the whole system (with the sim runtime) without hardware.

    The uuid embeds the hostname so simulated GPUs of different hosts never collide in the
    ledger; several simulated workers on one host take disjoint indices (`first_index`).
    `domains` splits them into that many topology domains of consecutive indices (a PCIe box
    with one switch per half, say), labelled as simulated like everything else about them.
    """
    if domains < 1:
        raise GpuDiscoveryError(f"simulated topology domains must be >= 1, got {domains}")
    if count < 0 or first_index < 0:
        raise GpuDiscoveryError(f"simulated GPU count and first index must be >= 0, got {count}, {first_index}")
    if preset not in SIMULATED_PRESETS:
        raise GpuDiscoveryError(
            f"unknown simulated GPU preset {preset!r}; choose one of {sorted(SIMULATED_PRESETS)}"
        )
    host = host_name()
    return [
        GpuInfo(
            index=i,
            name=f"Simulated {preset}",
            memory_mb=SIMULATED_PRESETS[preset],
            uuid=f"SIM-{host}-{i}",
            simulated=True,
            utilization=None,
            pci_bus_id=None,
            domain=f"sim-d{(i - first_index) * domains // max(count, 1)}",
        )
        for i in range(first_index, first_index + count)
    ]


def live_utilization(indices: list[int]) -> dict[int, float]:
    """Current GPU utilization (percent) for heartbeats; {} when NVML is unavailable."""
    try:
        with _nvml() as nv:
            result: dict[int, float] = {}
            for i in indices:
                handle = _optional(nv.nvmlDeviceGetHandleByIndex, i)
                util = _optional(nv.nvmlDeviceGetUtilizationRates, handle) if handle is not None else None
                if util is not None:
                    result[i] = float(util.gpu)
            return result
    except (GpuDiscoveryError, *_nvml_errors()):
        return {}


def busy_gpus(indices: list[int], min_free_fraction: float, share: float = 1.0) -> dict[int, str]:
    """GPUs among `indices` that an engine must not be launched on, with the reason: less
    than `min_free_fraction` of their memory free, or compute processes already running
    (at this point none of ours should be). {} when NVML cannot tell (nothing to check).

    `share` < 1: the engine gets one slot of GPUs split between engines, so the other slots'
    engines are expected there: processes are tolerated, and only `min_free_fraction` of the
    slot's share of memory must be free."""
    busy: dict[int, str] = {}
    try:
        with _nvml() as nv:
            for i in indices:
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                memory = nv.nvmlDeviceGetMemoryInfo(handle)
                processes = _optional(nv.nvmlDeviceGetComputeRunningProcesses, handle) or []
                reasons = []
                if processes and share >= 1.0:
                    pids = ", ".join(str(p.pid) for p in processes[:5])
                    reasons.append(f"{len(processes)} compute process(es) running (pid {pids})")
                if memory.total and memory.free < min_free_fraction * share * memory.total:
                    reasons.append(f"{(memory.total - memory.free) // 2**20} MiB of "
                                   f"{memory.total // 2**20} MiB in use")
                if reasons:
                    busy[i] = f"GPU {i}: " + ", ".join(reasons)
    except (GpuDiscoveryError, *_nvml_errors()):
        return {}
    return busy
