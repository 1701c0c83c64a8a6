"""Command-line parsing for the simulated engine.

Why: the autotuner hands the sim the very argv it would give a real SGLang or vLLM server,
so every flag of that engine's vocabulary (app.domain.engines) is accepted — the ones the
performance model reads are defined here, the others are parsed with their type and
ignored — and anything else is refused with argparse's "unrecognized arguments" error,
exit code 2, as the real launchers do. The simulator's own options (``--sim-*``,
``--parent-pid``, ``--num-gpus``) are accepted for both engines.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import lru_cache

from .model import GPU_PRESETS, MODEL_PRESETS, QUANT_BYTES, EngineSettings

ENGINES = ("sglang", "vllm")
KV_DTYPES = ["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bf16", "bfloat16"]
QUANT_CHOICES = sorted(k for k in QUANT_BYTES if k is not None)
DEFAULT_TIME_SCALE = 1.0


@dataclass(frozen=True)
class SimEngineConfig:
    """Everything the server needs: where to listen, what to simulate and how fast."""

    engine: str
    model: str  # served name (what /v1/models lists)
    model_path: str  # what was passed as --model (used to guess the preset)
    host: str
    port: int
    settings: EngineSettings
    gpu: str
    model_preset: str | None
    time_scale: float
    startup_seconds: float | None  # explicit value = wall seconds; None = model default
    parent_pid: int | None
    num_gpus: int
    launched_at: float | None = None  # epoch seconds the runtime launched us (start-up counts from it)


def _engine_of(argv: list[str]) -> str:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--engine", choices=ENGINES, default="sglang")
    known, _ = pre.parse_known_args(argv)
    return known.engine


@lru_cache(maxsize=None)
def build_parser(engine: str) -> argparse.ArgumentParser:
    """The argparse parser of one engine flavour, plus the sim options (built once per
    process: an engine forked from a warm process starts without building it)."""
    prog = "python -m sglang.launch_server (simulated)" if engine == "sglang" else "vllm serve (simulated)"
    p = argparse.ArgumentParser(prog=prog, allow_abbrev=False)
    p.add_argument("--engine", choices=ENGINES, default="sglang")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000 if engine == "sglang" else 8000)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--kv-cache-dtype", choices=KV_DTYPES, default="auto")
    p.add_argument("--quantization", choices=QUANT_CHOICES, default=None)
    if engine == "sglang":
        p.add_argument("--model", "--model-path", dest="model", required=True)
        p.add_argument("--tp-size", "--tp", dest="tp", type=int, default=1)
        p.add_argument("--dp-size", dest="dp", type=int, default=1)
        p.add_argument("--mem-fraction-static", dest="mem_fraction", type=float, default=0.88)
        p.add_argument("--max-running-requests", dest="max_running", type=int, default=None)
        p.add_argument("--chunked-prefill-size", dest="chunk", type=int, default=8192)
        p.add_argument("--schedule-policy", choices=["lpm", "fcfs", "random", "dfs-weight"], default="fcfs")
        p.add_argument("--schedule-conservativeness", type=float, default=1.0)
        p.add_argument("--cuda-graph-max-bs", type=int, default=160)
        p.add_argument("--disable-cuda-graph", action="store_true")
        p.add_argument("--context-length", type=int, default=None)
    else:
        p.add_argument("--model", required=True)
        p.add_argument("--tensor-parallel-size", "-tp", dest="tp", type=int, default=1)
        p.add_argument("--pipeline-parallel-size", "-pp", dest="pp", type=int, default=1)
        p.add_argument("--data-parallel-size", "-dp", dest="dp", type=int, default=1)
        p.add_argument("--gpu-memory-utilization", dest="mem_fraction", type=float, default=0.9)
        p.add_argument("--max-num-seqs", dest="max_running", type=int, default=256)
        p.add_argument("--max-num-batched-tokens", type=int, default=None)
        p.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True)
        p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
        p.add_argument("--max-model-len", dest="context_length", type=int, default=None)
        p.add_argument("--enforce-eager", action="store_true")
        p.add_argument("--max-cudagraph-capture-size", dest="cuda_graph_max_bs", type=int, default=256)
    sim = p.add_argument_group("simulator options")
    sim.add_argument("--sim-gpu", choices=sorted(GPU_PRESETS), default="H100-80GB")
    sim.add_argument("--sim-model-preset", choices=sorted(MODEL_PRESETS), default=None)
    sim.add_argument("--sim-time-scale", type=float, default=DEFAULT_TIME_SCALE)
    sim.add_argument("--sim-startup-seconds", type=float, default=None,
                     help="wall seconds of 503 start-up (default: model-derived, times the time scale)")
    sim.add_argument("--parent-pid", type=int, default=None)
    sim.add_argument("--sim-launched-at", type=float, default=None,
                     help="epoch seconds when the launcher started this process; start-up is counted from it")
    sim.add_argument("--num-gpus", type=int, default=None)
    _accept_vocabulary(p, engine)
    return p


def modelled_flags(engine: str) -> set[str]:
    """The engine flags the performance model reads (defined above, not from the vocabulary)."""
    parser = build_parser(engine)
    return {opt[2:] for action in parser._actions if not action.dest.startswith(_IGNORED)
            for opt in action.option_strings if opt.startswith("--") and action.container is parser}


_IGNORED = "ignored:"
_TYPES = {"int": int, "float": float, "str": str}


def _accept_vocabulary(parser: argparse.ArgumentParser, engine: str) -> None:
    """Every other flag of the real engine's vocabulary: parsed (type and choices checked as
    the real engine would), then ignored by the model."""
    from app.domain.engines.flags import load_vocabulary

    vocab = load_vocabulary(engine)
    taken = set(parser._option_string_actions)
    for name, spec in vocab.flags.items():
        names = [f"--{name}"] + [("-" if len(a) <= 2 else "--") + a for a, target in vocab.aliases.items()
                                 if target == name]
        names = [n for n in names if n not in taken]
        if f"--{name}" not in names:
            continue
        kwargs: dict = {"dest": _IGNORED + name, "default": None}
        if spec.type == "bool":
            kwargs["action"] = "store_true"
        elif spec.type == "bool_optional":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=_TYPES[spec.type], nargs=spec.nargs, choices=spec.choices)
            if spec.choices is not None:
                kwargs["type"] = str
        try:
            parser.add_argument(*names, **kwargs)
        except argparse.ArgumentError:  # e.g. a --no-x spelled both ways: the first one wins
            continue
        taken.update(names)


def _settings(engine: str, a: argparse.Namespace) -> EngineSettings:
    """Apply the engine's defaults and map its flags onto the engine-neutral settings."""
    if engine == "sglang":
        return EngineSettings(
            engine="sglang", tp=a.tp, pp=1, dp=a.dp, mem_fraction=a.mem_fraction,
            max_running=None if a.max_running is None else max(1, a.max_running // a.dp),
            prefill_budget=a.chunk if a.chunk and a.chunk > 0 else None,
            schedule_policy=a.schedule_policy,
            new_token_ratio=min(1.0, 0.7 * a.schedule_conservativeness),
            cuda_graph_max_bs=0 if a.disable_cuda_graph else a.cuda_graph_max_bs,
            kv_cache_dtype=a.kv_cache_dtype, quantization=a.quantization,
            context_length=a.context_length,
        )
    budget = a.max_num_batched_tokens
    if budget is None:
        # without chunking the budget must cover max_model_len; plan() resolves None that way
        budget = 2048 if a.enable_chunked_prefill else None
    return EngineSettings(
        engine="vllm", tp=a.tp, pp=a.pp, dp=a.dp, mem_fraction=a.mem_fraction,
        max_running=a.max_running, prefill_budget=budget, schedule_policy="fcfs",
        new_token_ratio=0.0, cuda_graph_max_bs=0 if a.enforce_eager else a.cuda_graph_max_bs,
        kv_cache_dtype=a.kv_cache_dtype, quantization=a.quantization,
        context_length=a.context_length, chunked_prefill=a.enable_chunked_prefill,
    )


def parse_args(argv: list[str]) -> SimEngineConfig:
    """Parse argv; exits (code 2) on unknown or malformed flags like the real engines,
    and with code 1 when more GPUs are needed than are visible."""
    engine = _engine_of(argv)
    parser = build_parser(engine)
    a = parser.parse_args(argv)
    settings = _settings(engine, a)
    world = settings.tp * settings.pp * settings.dp
    num_gpus = a.num_gpus if a.num_gpus is not None else world
    if world > num_gpus:
        parser.exit(1, f"RuntimeError: tp*pp*dp = {world} GPUs requested but only {num_gpus} are visible.\n")
    if a.sim_time_scale <= 0:
        parser.error("--sim-time-scale must be > 0")
    return SimEngineConfig(
        engine=engine, model=a.served_model_name or a.model, model_path=a.model, host=a.host, port=a.port,
        settings=settings, gpu=a.sim_gpu, model_preset=a.sim_model_preset,
        time_scale=a.sim_time_scale, startup_seconds=a.sim_startup_seconds,
        parent_pid=a.parent_pid, num_gpus=num_gpus, launched_at=a.sim_launched_at,
    )
