"""The `sim` runtime: the simulated engine (workers.simengine) run as a process.

Everything but the command is the process runtime, so the sim path exercises the same
start / health / stop code as real engines. The engine is told our pid and exits if we
die, so a killed worker cannot leave simulated engines behind.
"""
from __future__ import annotations

import os
import sys
import time

from workers.runtimes.base import EngineRequest
from workers.runtimes.process import ProcessRuntime


class SimRuntime(ProcessRuntime):
    name = "sim"
    simulated = True

    def command(self, request: EngineRequest, port: int) -> list[str]:
        sim = request.sim
        argv = [
            sys.executable, "-m", "workers.simengine",
            "--host", "127.0.0.1", "--port", str(port),
            "--engine", request.engine, "--model", request.model,
            "--num-gpus", str(len(request.gpu_indices)),
            "--parent-pid", str(os.getpid()),
            "--sim-launched-at", repr(time.time()),
        ]
        for key, flag in (
            ("gpu", "--sim-gpu"),
            ("model_preset", "--sim-model-preset"),
            ("time_scale", "--sim-time-scale"),
            ("startup_seconds", "--sim-startup-seconds"),
        ):
            if sim.get(key) is not None:
                argv += [flag, str(sim[key])]
        return [*argv, *request.flags]
