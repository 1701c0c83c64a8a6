"""The simulated engine in virtual time: the performance model's own answer, no host noise.

Why: the HTTP engine runs on the wall clock (scaled by `--sim-time-scale`), so its figures
carry the host's scheduling noise, which grows when several engines share two cores. This
module drives the *same* scheduler (admission, chunked prefill, preemption) and the same
iteration-time model with a virtual clock and a closed-loop client, deterministically.
It answers "what would the model say for this configuration?", which tests use to check
properties of the model (e.g. that the quickstart's optimum is not a corner of the grid)
and to compare the HTTP engine's measurements against.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from app.tools.loadgen.metrics import RequestRecord, summarize
from app.tools.loadgen.scenarios import parse_scenario

from .flags import parse_args
from .model import GPU_PRESETS, iteration_time, plan, resolve_model
from .server import ReplicaScheduler, SimRequest, Stats


@dataclass
class _Replica:
    sched: ReplicaScheduler
    busy_until: float | None = None
    batch: tuple[list, list] = field(default_factory=lambda: ([], []))


def replay(argv: list[str], scenario: str, concurrency: int, num_requests: int, seed: int = 0) -> dict:
    """Closed loop at `concurrency` for `num_requests` requests on the engine that `argv`
    (the engine's flags, as the sim server takes them) describes; returns the same summary
    as the benchmark client, in simulated seconds. Raises StartupError for configurations
    the engine would refuse."""
    cfg = parse_args(argv)
    model, gpu = resolve_model(cfg.model_preset, cfg.model_path), GPU_PRESETS[cfg.gpu]
    cap = plan(model, gpu, cfg.settings)
    stats = Stats()
    replicas = [
        _Replica(ReplicaScheduler(model, gpu, cfg.settings, cap, 1.0, stats, index=i)) for i in range(cfg.settings.dp)
    ]
    next_replica = itertools.cycle(replicas)
    shape, rng = parse_scenario(scenario), random.Random(seed)
    records: dict[int, RequestRecord] = {}
    live: dict[int, SimRequest] = {}
    issued = 0
    clock = 0.0

    def issue() -> None:
        nonlocal issued
        prompt, out = shape.sample(rng)
        req = SimRequest(issued, prompt, out)
        records[issued] = RequestRecord(start=clock, ttft=None, end=clock, input_tokens=prompt)
        live[issued] = req
        next(next_replica).sched.submit(req)
        issued += 1

    for _ in range(min(concurrency, num_requests)):
        issue()
    while live:
        for rep in replicas:  # idle replicas with work start an iteration now
            s = rep.sched
            if rep.busy_until is None and (s.running or s.waiting):
                prefill, decode = (s._plan_sglang if s.s.engine == "sglang" else s._plan_vllm)()
                if prefill or decode:
                    t = iteration_time(model, gpu, s.s, prefill_tokens=sum(n for _, n in prefill), decode_seqs=len(decode),
                                       context_tokens=sum(r.kv for r in decode), waiting=len(s.waiting))
                    rep.busy_until, rep.batch = clock + t, (prefill, decode)
        rep = min((r for r in replicas if r.busy_until is not None), key=lambda r: r.busy_until)
        clock = rep.busy_until
        prefill, decode = rep.batch
        before = {r.seq: r.generated for r, _ in prefill} | {r.seq: r.generated for r in decode}
        rep.sched._apply(prefill, decode)
        rep.busy_until = None
        for seq, generated in before.items():
            req, rec = live.get(seq), records[seq]
            if req is None or req.generated == generated:
                continue
            rec.chunk_times.append(clock)
            rec.ttft = rec.ttft if rec.ttft is not None else clock - rec.start
            if req.done:
                rec.end, rec.output_tokens = clock, req.generated
                del live[seq]
                if issued < num_requests:
                    issue()
    level = summarize(list(records.values()), clock, cfg.num_gpus, concurrency)
    level["virtual"] = True
    return level
