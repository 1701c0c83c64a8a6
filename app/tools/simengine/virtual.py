"""The simulated engine in virtual time: the performance model's own answer, no host noise.

Why: the HTTP engine runs on the wall clock (scaled by `--sim-time-scale`), so its figures
carry the host's scheduling noise, which grows when several engines share two cores. This
module drives the *same* scheduler (admission, chunked prefill, preemption) and the same
iteration-time model with a virtual clock and the benchmark client's load shapes (closed
loop at a concurrency, or open-loop arrivals at a request rate with an optional cap), with
request i drawn exactly as the client draws it, deterministically. It answers "what would
the model say for this configuration and this load level?": the tuner's figures in the
simulated engine's deterministic mode (`sim.clock: "virtual"`, see workers.experiment_job),
and what tests use to check properties of the model.
"""
from __future__ import annotations

import itertools
import math
import random
from collections import deque
from dataclasses import dataclass, field

from app.tools.loadgen.arrivals import arrival_offsets
from app.tools.loadgen.metrics import RequestRecord, summarize
from app.tools.loadgen.scenarios import Scenario, parse_scenario

from .flags import parse_args
from .model import GPU_PRESETS, Capacity, iteration_time, plan, resolve_model
from .server import ReplicaScheduler, SimRequest, Stats

REQUEST_SEED_STRIDE = 1_000_003  # app.tools.loadgen.level.LevelPlan.spec draws request i this way


@dataclass
class _Replica:
    sched: ReplicaScheduler
    busy_until: float | None = None
    batch: tuple[list, list] = field(default_factory=lambda: ([], []))


@dataclass(frozen=True)
class Load:
    """One load level as the benchmark client runs it: closed loop (`concurrency`) or open
    loop (`request_rate` with `burstiness`, capped by `max_concurrency`); new requests start
    until `max_requests` were started or `max_time_s` (simulated seconds) passed."""

    concurrency: int | None = None
    request_rate: float | None = None
    burstiness: float = 1.0
    max_concurrency: int | None = None
    max_requests: int | None = None
    max_time_s: float | None = None
    seed: int = 0


def request_lengths(scenario: Scenario, seed: int, i: int) -> tuple[int, int]:
    """(input, output) tokens of request i, as the benchmark client draws them."""
    return scenario.sample(random.Random(seed * REQUEST_SEED_STRIDE + i))


def replay(argv: list[str], scenario: str, concurrency: int, num_requests: int, seed: int = 0) -> dict:
    """Closed loop at `concurrency` for `num_requests` requests (see `replay_level`)."""
    return replay_level(argv, scenario, Load(concurrency=concurrency, max_requests=num_requests, seed=seed))


def replay_level(argv: list[str], scenario: str | Scenario, load: Load, num_gpus: int | None = None,
                 slo: dict[str, float] | None = None) -> dict:
    """The level's summary (the benchmark client's keys, `summarize`'s figures) in simulated
    seconds for the engine that `argv` (its flags, as the sim server takes them) describes,
    plus ``virtual: True``. Raises StartupError for configurations the engine would refuse."""
    if (load.concurrency is None) == (load.request_rate is None):
        raise ValueError("give a concurrency (closed loop) or a request rate (open loop)")
    cfg = parse_args(argv)
    model, gpu = resolve_model(cfg.model_preset, cfg.model_path), GPU_PRESETS[cfg.gpu]
    cap = plan(model, gpu, cfg.settings)
    shape = parse_scenario(scenario) if isinstance(scenario, str) else scenario
    run = _Run(cfg, model, gpu, cap, shape, load)
    clock = run.drive()
    level = summarize(list(run.records.values()), clock, num_gpus or cfg.num_gpus, load.concurrency, slo=slo)
    level["virtual"] = True
    return level


class _Run:
    """One level's discrete-event simulation: iteration ends and request arrivals."""

    def __init__(self, cfg, model, gpu, cap: Capacity, shape: Scenario, load: Load) -> None:  # type: ignore[no-untyped-def]
        self.model, self.gpu, self.cap, self.shape, self.load = model, gpu, cap, shape, load
        stats = Stats()
        self.replicas = [_Replica(ReplicaScheduler(model, gpu, cfg.settings, cap, 1.0, stats, index=i))
                         for i in range(cfg.settings.dp)]
        self.next_replica = itertools.cycle(self.replicas)
        self.limit = load.max_requests if load.max_requests is not None else math.inf
        self.deadline = load.max_time_s if load.max_time_s is not None else math.inf
        self.records: dict[int, RequestRecord] = {}
        self.live: dict[int, SimRequest] = {}
        self.started = 0
        self.clock = 0.0

    def _send(self, i: int) -> None:
        """Request i leaves the client now; one the engine refuses fails at once, as over HTTP."""
        self.started += 1
        prompt, out = request_lengths(self.shape, self.load.seed, i)
        rec = RequestRecord(start=self.clock, ttft=None, end=self.clock, input_tokens=prompt)
        self.records[i] = rec
        if prompt + out > min(self.cap.max_context, self.cap.kv_tokens):
            rec.error = f"http_400: request needs {prompt + out} tokens"
            return
        req = SimRequest(i, prompt, out)
        self.live[i] = req
        next(self.next_replica).sched.submit(req)

    def _may_start(self) -> bool:
        return self.started < self.limit and self.clock < self.deadline

    def drive(self) -> float:
        """Run to the level's end; returns its duration in simulated seconds."""
        load = self.load
        closed = load.concurrency is not None
        arrivals = iter(()) if closed else arrival_offsets(load.request_rate, load.burstiness, load.seed)
        next_arrival = None if closed else next(arrivals)
        due: deque[int] = deque()  # open loop: arrived, waiting for a max_concurrency slot
        arrived = 0
        cap = load.concurrency if closed else (load.max_concurrency or math.inf)
        while True:
            # the client sends what it may now
            if closed:
                while len(self.live) < cap and self._may_start():
                    self._send(self.started)
            else:
                while due and len(self.live) < cap and self.clock < self.deadline:
                    self._send(due.popleft())
                if self.clock >= self.deadline:
                    due.clear()
            self._start_iterations()
            busy = [r for r in self.replicas if r.busy_until is not None]
            end = min((r.busy_until for r in busy), default=math.inf)
            if next_arrival is not None and (arrived >= self.limit or next_arrival >= self.deadline):
                next_arrival = None
            if next_arrival is not None and next_arrival <= end:
                self.clock = max(self.clock, next_arrival)
                due.append(arrived)
                arrived += 1
                next_arrival = next(arrivals)
                continue
            if not busy:
                return self.clock
            self._finish_iteration(min(busy, key=lambda r: r.busy_until))

    def _start_iterations(self) -> None:
        for rep in self.replicas:  # idle replicas with work start an iteration now
            s = rep.sched
            if rep.busy_until is None and (s.running or s.waiting):
                prefill, decode = (s._plan_sglang if s.s.engine == "sglang" else s._plan_vllm)()
                if prefill or decode:
                    t = iteration_time(self.model, self.gpu, s.s, prefill_tokens=sum(n for _, n in prefill),
                                       decode_seqs=len(decode), context_tokens=sum(r.kv for r in decode),
                                       waiting=len(s.waiting))
                    rep.busy_until, rep.batch = self.clock + t, (prefill, decode)

    def _finish_iteration(self, rep: _Replica) -> None:
        self.clock = rep.busy_until
        prefill, decode = rep.batch
        before = {r.seq: r.generated for r, _ in prefill} | {r.seq: r.generated for r in decode}
        rep.sched._apply(prefill, decode)
        rep.busy_until = None
        for seq, generated in before.items():
            req, rec = self.live.get(seq), self.records[seq]
            if req is None or req.generated == generated:
                continue
            rec.chunk_times.append(self.clock)
            rec.ttft = rec.ttft if rec.ttft is not None else self.clock - rec.start
            if req.done:
                rec.end, rec.output_tokens = self.clock, req.generated
                del self.live[seq]
