"""Admission of wall-clock simulated engines: a host starts no more than its CPUs can feed.

Why: on the wall clock a simulated engine and the benchmark client spend CPU on every streamed
token; started beside too many others on a small host, they fall behind the model's schedule and
their figures are the host's (workers.sim_figures then marks them unreliable, after measuring
twice). The rule, per host: an engine's demand is its modelled token rate at full batch, in wall
time, over what one core streams (TOKENS_PER_CORE_S, engine and client together); the engines
admitted at once may demand at most SHARE of the host's cores, and one engine is always admitted
when none runs (a demand above the host is let through alone: its lag will say so). An engine
that does not fit waits, before it starts, until enough others end; its experiment has claimed
its GPUs already, so it shows that wait (the phase PHASE, and what it waits for), and its
length starts when it is admitted (the wait is the host's, not the configuration's: the length
model and the GPU-hour budget must not learn it; a time limit that runs out after a wait is no
verdict either: the experiment is measured again, `app.store.lifecycle`). The ledger is one file per
host and user, under an exclusive lock; an entry whose process is gone no longer counts, so
nothing outlives its owner. Engines in virtual mode are not admitted here: their figures do not
depend on the host.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from app.domain.taskspec import TaskSpec
from app.tools.loadgen.scenarios import parse_scenario
from app.tools.simengine.flags import parse_args
from app.tools.simengine.model import GPU_PRESETS, iteration_time, plan, resolve_model
from app.tools.simengine.virtual import request_lengths
from workers.runtimes.base import EngineRequest
from workers.runtimes.procs import start_ticks
from workers.sim_figures import sim_argv

# Streamed tokens one core carries through engine and client (README; benchmarks/sim_token_cpu.py).
TOKENS_PER_CORE_S = 16_000.0
SHARE = 0.5  # of the host's cores for simulated engines; the rest is the control plane's
WAIT_S = 0.2
PHASE = "waiting for host CPU"  # a waiting experiment's phase (at most 20 characters: Experiment.phase)


def demand_cores(argv: list[str], scenario: str, concurrency: int, time_scale: float) -> float:
    """Cores one engine needs at full batch: its decode token rate (all replicas), in wall time."""
    cfg = parse_args(argv)
    model, gpu = resolve_model(cfg.model_preset, cfg.model_path), GPU_PRESETS[cfg.gpu]
    cap = plan(model, gpu, cfg.settings)
    prompt, out = request_lengths(parse_scenario(scenario), 0, 0)
    per_replica = max(1, min(cap.max_running, -(-concurrency // cfg.settings.dp)))
    seconds = iteration_time(model, gpu, cfg.settings, prefill_tokens=0, decode_seqs=per_replica,
                             context_tokens=per_replica * (prompt + out // 2))
    return per_replica * cfg.settings.dp / seconds / time_scale / TOKENS_PER_CORE_S


def ledger_path() -> Path:
    return Path(tempfile.gettempdir()) / f"autotuner-sim-admission-{os.getuid()}.json"


def _live(entries: dict[str, dict]) -> dict[str, dict]:
    return {key: e for key, e in entries.items() if start_ticks(e["pid"]) == e["ticks"]}


class Admission:
    """Hold a share of the host's CPUs for one engine: `wait()` before it starts, `release()` after."""

    def __init__(self, key: str, demand: float, cores: int | None = None, path: Path | None = None) -> None:
        self.key, self.demand = key, demand
        self.capacity = (cores or os.cpu_count() or 1) * SHARE
        self.path = path or ledger_path()
        self.held = 0.0  # what the engines admitted before it demanded, at its last try
        self._refused_at: float | None = None  # when `wait()` first found no room (monotonic)
        self._admitted_at: float | None = None

    def _update(self, change: Callable[[dict[str, dict]], bool]) -> bool:
        with open(self.path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or its process dies
            f.seek(0)
            try:
                entries = _live(json.loads(f.read() or "{}"))
            except ValueError:
                entries = {}
            done = change(entries)
            f.seek(0)
            f.truncate()
            f.write(json.dumps(entries))
            return done

    def try_admit(self) -> bool:
        def admit(entries: dict[str, dict]) -> bool:
            self.held = sum(e["demand"] for e in entries.values())
            if entries and self.held + self.demand > self.capacity:
                return False
            entries[self.key] = {"pid": os.getpid(), "ticks": start_ticks(os.getpid()), "demand": self.demand}
            self._admitted_at = time.monotonic()
            return True
        return self._update(admit)

    def wait(self, should_stop: Callable[[], bool], waiting: Callable[[str], None] | None = None) -> bool:
        """Until admitted (True) or `should_stop()` (False). `waiting(why)` is called once, when
        the first try finds no room (what it waits for, as a person reads it)."""
        while not self.try_admit():
            if self._refused_at is None:
                self._refused_at = time.monotonic()
                if waiting is not None:
                    waiting(self.why())
            if should_stop():
                return False
            time.sleep(WAIT_S)
        return True

    def waited_s(self) -> float:
        """How long `wait()` has waited for room (so far, while it still waits): time of the
        attempt's that was the host's, not its configuration's."""
        if self._refused_at is None:
            return 0.0
        return (self._admitted_at or time.monotonic()) - self._refused_at

    def why(self) -> str:
        """What a waiting engine waits for: its demand against what the others hold."""
        return (f"{PHASE}: its engine and client need {self.demand:.2f} cores; the simulated engines admitted "
                f"on this host hold {self.held:.2f} of the {self.capacity:g} cores they may use")

    def release(self) -> None:
        self._update(lambda entries: entries.pop(self.key, None) is not None)


def for_engine(spec: TaskSpec, request: EngineRequest, key: str) -> Admission | None:
    """The admission a wall-clock simulated engine needs before it starts (None for any other)."""
    if not request.launcher.simulated or spec.sim is None or spec.sim.clock != "wall":
        return None
    bench = spec.benchmark
    concurrency = max(bench.num_concurrency or [0]) if not bench.request_rate else 0
    concurrency = concurrency or bench.max_concurrency or int(bench.max_requests_per_iteration)
    demand = demand_cores(sim_argv(request), bench.traffic_scenarios[0], concurrency, float(spec.sim.time_scale))
    return Admission(key, demand)
