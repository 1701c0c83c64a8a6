"""Warm start: whether an earlier task's results may seed a new one.

Why so strict: an earlier task's figures are only worth starting from when they measured the
same thing. The model, the engine, where it runs (deployment mode; for the simulated engine its
GPU and model preset), the traffic (scenarios, load levels, API, burstiness, request bounds),
the objectives with the level they read and the SLOs must all match; only the search space may
differ (points outside the new one are left out). `differences` names every mismatch, so the
refusal says exactly what to change.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.domain.taskspec import TaskSpec


def _facts(spec: "TaskSpec") -> dict[str, Any]:
    sim = spec.sim if spec.launcher.simulated else None
    bench = spec.benchmark
    return {
        "model": spec.model.id_or_path,
        "engine": spec.engine,
        "deployment mode": spec.deployment_mode,
        "simulated GPU": sim.gpu if sim else None,
        "simulated model preset": sim.model_preset if sim else None,
        "traffic scenarios": list(bench.traffic_scenarios),
        "load levels": bench.levels,
        "API": bench.api,
        "burstiness": bench.burstiness,
        "requests per level": bench.max_requests_per_iteration,
        "objectives": spec.objective_names,
        "objective level": spec.optimization.objective_level,
        "GPU price per hour": spec.optimization.gpu_price_per_hour,
        "SLOs": spec.to_dict().get("slo"),
    }


def differences(earlier: "TaskSpec", later: "TaskSpec") -> list[str]:
    """What makes `earlier`'s history unusable for `later`, in words (empty: compatible)."""
    a, b = _facts(earlier), _facts(later)
    return [f"{name}: {a[name]!r} there, {b[name]!r} here" for name in a if a[name] != b[name]]
