"""Entry point: ``python -m app.tools.simengine [engine flags] [sim options]``.

Why the order: flags are parsed and the engine's start-up checks (memory, tp vs. heads)
are run before aiohttp is imported, so a bad configuration fails within a fraction of a
second with the engine-like message on stderr and exit code 1 (2 for unknown flags).
"""
from __future__ import annotations

import time

_LAUNCHED_AT = time.time()  # before the heavy imports: start-up counts from here at the latest

import asyncio  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from .flags import parse_args  # noqa: E402
from .model import GPU_PRESETS, StartupError, plan, resolve_model


def main(argv: list[str] | None = None, started_at: float | None = None) -> int:
    """Run the engine; `started_at` (epoch seconds) is when this engine's process began, for
    one forked from a process that imported us long before (workers.runtimes.forkserver)."""
    started_at = _LAUNCHED_AT if started_at is None else started_at
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    model = resolve_model(cfg.model_preset, cfg.model_path)
    gpu = GPU_PRESETS[cfg.gpu]
    try:
        cap = plan(model, gpu, cfg.settings)
    except StartupError as exc:
        print(f"[simulated {cfg.engine}] start-up failed\n{exc}", file=sys.stderr, flush=True)
        return 1
    # An explicit --sim-startup-seconds is wall time; the model's default is simulated time.
    startup_s = cfg.startup_seconds if cfg.startup_seconds is not None else cap.startup_seconds * cfg.time_scale
    s = cfg.settings
    print(
        f"[simulated {cfg.engine}] model={cfg.model} preset={model.name} gpu={gpu.name} "
        f"tp={s.tp} pp={s.pp} dp={s.dp} mem_fraction={s.mem_fraction:g} weights/gpu={cap.weight_bytes_per_gpu / 1e9:.2f}GB "
        f"KV cache #tokens={cap.kv_tokens} max_running_requests={cap.max_running} "
        f"context_len={cap.max_context} prefill_budget={cap.prefill_budget} time_scale={cfg.time_scale}",
        flush=True,
    )
    from .server import serve  # imported late: aiohttp takes most of the start-up time

    try:
        return asyncio.run(serve(cfg, model, gpu, cap, startup_s, min(cfg.launched_at or started_at, started_at)))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Nothing is left to clean up; skipping interpreter teardown shortens the stop that the
    # worker waits for before it may free the GPUs.
    os._exit(code)
