"""GPU discovery against a fake NVML (pynvml functions monkeypatched)."""
from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from workers import gpu_discovery
from workers.gpu_discovery import (
    GpuDiscoveryError,
    GpuInfo,
    discover_gpus,
    live_utilization,
    simulated_gpus,
)

pytestmark = pytest.mark.unit

pynvml = gpu_discovery.pynvml


class FakeNvml:
    """Two GPUs; GPU 0 reports bytes (old pynvml), GPU 1 str (new pynvml)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gpus = [
            dict(name=b"NVIDIA H100 80GB HBM3", total=81559 * 1024 * 1024,
                 uuid=b"GPU-aaaa", util=12, bus=b"00000000:18:00.0"),
            dict(name="NVIDIA H100 80GB HBM3", total=81559 * 1024 * 1024,
                 uuid="GPU-bbbb", util=87, bus="00000000:2A:00.0"),
        ]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in (
            "nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
            "nvmlDeviceGetName", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUUID",
            "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetPciInfo", "nvmlDeviceGetTopologyCommonAncestor",
            "nvmlDeviceGetP2PStatus",
        ):
            monkeypatch.setattr(pynvml, name, getattr(self, name))

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return ("handle", i)

    def nvmlDeviceGetName(self, h):
        return self.gpus[h[1]]["name"]

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=self.gpus[h[1]]["total"], used=0, free=0)

    def nvmlDeviceGetUUID(self, h):
        return self.gpus[h[1]]["uuid"]

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self.gpus[h[1]]["util"], memory=0)

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(busId=self.gpus[h[1]]["bus"])

    # topology: every pair's common PCIe ancestor and NVLink status (default: host bridge, none)
    links: dict[tuple[int, int], tuple[int, int]] = {}

    def nvmlDeviceGetTopologyCommonAncestor(self, h1, h2):
        self.calls.append(f"ancestor {h1[1]} {h2[1]}")
        return self.links.get((h1[1], h2[1]), (pynvml.NVML_TOPOLOGY_HOSTBRIDGE, 0))[0]

    def nvmlDeviceGetP2PStatus(self, h1, h2, index):
        self.calls.append(f"p2p {h1[1]} {h2[1]} {index}")
        nvlink = self.links.get((h1[1], h2[1]), (0, pynvml.NVML_P2P_STATUS_NOT_SUPPORTED))[1]
        return nvlink if index == pynvml.NVML_P2P_CAPS_INDEX_NVLINK else pynvml.NVML_P2P_STATUS_NOT_SUPPORTED


@pytest.fixture
def nvml(monkeypatch) -> FakeNvml:
    fake = FakeNvml()
    fake.install(monkeypatch)
    return fake


def test_discover_two_gpus(nvml):
    gpus = discover_gpus(None)
    assert gpus == [
        GpuInfo(index=0, name="NVIDIA H100 80GB HBM3", memory_mb=81559, uuid="GPU-aaaa",
                simulated=False, utilization=12.0, pci_bus_id="00000000:18:00.0", domain="d0"),
        GpuInfo(index=1, name="NVIDIA H100 80GB HBM3", memory_mb=81559, uuid="GPU-bbbb",
                simulated=False, utilization=87.0, pci_bus_id="00000000:2A:00.0", domain="d1"),
    ]  # two GPUs with nothing closer than the host bridge: two domains
    assert nvml.calls == ["init", "ancestor 0 1", f"p2p 0 1 {pynvml.NVML_P2P_CAPS_INDEX_NVLINK}", "shutdown"]


def test_discover_subset_keeps_order(nvml):
    assert [g.index for g in discover_gpus([1])] == [1]
    assert [g.uuid for g in discover_gpus([1, 0])] == ["GPU-bbbb", "GPU-aaaa"]


def test_bad_index_names_it_and_count(nvml):
    with pytest.raises(GpuDiscoveryError, match=r"GPU index 5 .*found 2 GPU"):
        discover_gpus([0, 5])
    assert nvml.calls == ["init", "shutdown"]


def test_duplicate_index_refused(nvml):
    with pytest.raises(GpuDiscoveryError, match="more than once"):
        discover_gpus([0, 0])


def test_utilization_unsupported_is_none(nvml, monkeypatch):
    def refuse(h):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", refuse)
    gpus = discover_gpus([0])
    assert gpus[0].utilization is None
    assert gpus[0].memory_mb == 81559


def test_query_error_still_shuts_down(nvml, monkeypatch):
    def broken(h):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", broken)
    with pytest.raises(GpuDiscoveryError, match="NVML query failed"):
        discover_gpus(None)
    assert nvml.calls == ["init", "shutdown"]


def _no_library(monkeypatch):
    def init():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    shutdown_calls: list[int] = []
    monkeypatch.setattr(pynvml, "nvmlInit", init)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: shutdown_calls.append(1))
    return shutdown_calls


def test_nvml_missing_gives_hint(monkeypatch):
    shutdown_calls = _no_library(monkeypatch)
    with pytest.raises(GpuDiscoveryError) as err:
        discover_gpus(None)
    msg = str(err.value)
    assert msg.startswith("NVML is not available on this host (no NVIDIA driver?): ")
    assert "use --simulated-gpus N to run with simulated GPUs" in msg
    assert shutdown_calls == []


def test_nvml_missing_oserror(monkeypatch):
    def init():
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    monkeypatch.setattr(pynvml, "nvmlInit", init)
    with pytest.raises(GpuDiscoveryError, match="--simulated-gpus"):
        discover_gpus(None)


def test_simulated_gpus():
    gpus = simulated_gpus(3)
    host = socket.gethostname()
    assert [g.index for g in gpus] == [0, 1, 2]
    assert all(g.simulated for g in gpus)
    assert gpus[0].name == "Simulated H100-80GB"
    assert gpus[0].memory_mb == 81920
    assert [g.uuid for g in gpus] == [f"SIM-{host}-0", f"SIM-{host}-1", f"SIM-{host}-2"]
    h200 = simulated_gpus(1, preset="H200")[0]
    assert h200.name == "Simulated H200" and h200.memory_mb == 143771
    assert simulated_gpus(1, preset="A100-80GB")[0].memory_mb == 81920
    with pytest.raises(GpuDiscoveryError, match="unknown simulated GPU preset"):
        simulated_gpus(1, preset="TPU")


def test_utilization(nvml):
    assert live_utilization([0, 1]) == {0: 12.0, 1: 87.0}
    assert nvml.calls == ["init", "shutdown"]


def test_utilization_without_nvml(monkeypatch):
    _no_library(monkeypatch)
    assert live_utilization([0, 1]) == {}


def test_topology_domains_from_nvlink_and_pcie_switches(nvml):
    """Four GPUs: 0-1 joined by NVLink across the host bridge, 2-3 under one PCIe switch,
    nothing closer between the pairs: two domains. Every pair is asked once, in order."""
    nvml.gpus = nvml.gpus * 2
    nvml.links = {(0, 1): (pynvml.NVML_TOPOLOGY_HOSTBRIDGE, pynvml.NVML_P2P_STATUS_OK),
                  (2, 3): (pynvml.NVML_TOPOLOGY_MULTIPLE, pynvml.NVML_P2P_STATUS_NOT_SUPPORTED)}
    gpus = discover_gpus()
    assert [g.domain for g in gpus] == ["d0", "d0", "d1", "d1"]
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    assert [c for c in nvml.calls if c.startswith("ancestor")] == [f"ancestor {i} {j}" for i, j in pairs]
    assert [c for c in nvml.calls if c.startswith("p2p")] == [
        f"p2p {i} {j} {pynvml.NVML_P2P_CAPS_INDEX_NVLINK}" for i, j in pairs]


def test_topology_unknown_when_the_driver_cannot_tell(nvml, monkeypatch):
    def refuse(h1, h2):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetTopologyCommonAncestor", refuse)
    assert [g.domain for g in discover_gpus()] == [None, None]


def test_simulated_gpus_split_into_labelled_domains():
    gpus = simulated_gpus(8, domains=2, first_index=8)
    assert [g.domain for g in gpus] == ["sim-d0"] * 4 + ["sim-d1"] * 4
    with pytest.raises(GpuDiscoveryError, match="domains must be >= 1"):
        simulated_gpus(2, domains=0)
