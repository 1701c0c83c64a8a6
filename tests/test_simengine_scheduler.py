"""The simulated engine's scheduler in-process: limits, preemption, determinism."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from app.tools.simengine.model import GPU_PRESETS, MODEL_PRESETS, EngineSettings, plan
from app.tools.simengine.server import ReplicaScheduler, SimRequest, Stats

pytestmark = pytest.mark.unit

async def _drive(settings: EngineSettings, kv_tokens: int, n: int = 10, prompt: int = 100, out: int = 50):
    model, gpu = MODEL_PRESETS["llama-3-8b"], GPU_PRESETS["H100-80GB"]
    cap = replace(plan(model, gpu, settings), kv_tokens=kv_tokens, max_running=8)
    stats = Stats()
    sched = ReplicaScheduler(model, gpu, settings, cap, 1e-6, stats)
    task = asyncio.create_task(sched.run())
    reqs = [SimRequest(i, prompt, out) for i in range(n)]
    order: list[int] = []
    max_running = 0

    async def follow(r: SimRequest) -> None:
        nonlocal max_running
        while not r.done:
            await r.event.wait()
            r.event.clear()
            max_running = max(max_running, len(sched.running))
        order.append(r.seq)

    for r in reqs:
        sched.submit(r)
    await asyncio.wait_for(asyncio.gather(*(follow(r) for r in reqs)), 30)
    task.cancel()
    return reqs, stats, order, max_running


@pytest.mark.parametrize("settings", [
    EngineSettings(engine="vllm", prefill_budget=64, new_token_ratio=0.0),
    EngineSettings(engine="sglang", prefill_budget=64, new_token_ratio=0.2),
])
def test_scheduler_preempts_when_kv_runs_out_and_still_finishes(settings: EngineSettings) -> None:
    reqs, stats, _, max_running = asyncio.run(_drive(settings, kv_tokens=600))
    assert all(r.done and r.generated == 50 for r in reqs)
    assert stats.preempted > 0
    assert stats.generation_tokens == 10 * 50
    assert max_running <= 8


def test_scheduler_is_deterministic_for_same_arrivals() -> None:
    """The random policy draws from a seeded generator: the same arrivals finish in the same
    order, and that order is not first come, first served (which is trivially repeatable)."""
    s = EngineSettings(engine="sglang", prefill_budget=128, schedule_policy="random")
    first = asyncio.run(_drive(s, kv_tokens=2000))[2]
    second = asyncio.run(_drive(s, kv_tokens=2000))[2]
    fcfs = asyncio.run(_drive(replace(s, schedule_policy="fcfs"), kv_tokens=2000))[2]
    assert first == second and first != fcfs
