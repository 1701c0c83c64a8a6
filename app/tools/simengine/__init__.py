"""Simulated SGLang/vLLM engine: a real OpenAI-compatible HTTP server whose GPU is replaced
by an analytical performance model, so the autotuner can be run and tested without GPUs.

Run it as ``python -m app.tools.simengine --engine sglang|vllm --model M --port P [flags]``.
Only ``model`` (pure) and ``flags`` are imported here; the aiohttp server is imported
lazily by ``__main__`` so that flag errors are reported fast.
"""
from .model import (GPU_PRESETS, MODEL_PRESETS, Capacity, EngineSettings, GpuHardware, ModelSpec,
                    StartupError, iteration_time, plan, resolve_model)

__all__ = ["GPU_PRESETS", "MODEL_PRESETS", "Capacity", "EngineSettings", "GpuHardware", "ModelSpec",
           "StartupError", "iteration_time", "plan", "resolve_model"]
