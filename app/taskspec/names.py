"""Engine naming: original-format parameter names and aliases -> engine flag names."""
from __future__ import annotations

# Underscore names of the original format (OME presets) -> engine flag, per engine.
_ALIASES: dict[str, dict[str, str]] = {
    "tp_size": {"sglang": "tp-size", "vllm": "tensor-parallel-size"},
    "pp_size": {"sglang": "pp-size", "vllm": "pipeline-parallel-size"},
    "dp_size": {"sglang": "dp-size", "vllm": "data-parallel-size"},
    "mem_frac": {"sglang": "mem-fraction-static", "vllm": "gpu-memory-utilization"},
    "mem_fraction": {"sglang": "mem-fraction-static", "vllm": "gpu-memory-utilization"},
}
# SGLang-only spellings that vLLM would reject; only a note, the engine has the last word.
_VLLM_SPELLING = {
    "tp-size": "tensor-parallel-size",
    "pp-size": "pipeline-parallel-size",
    "dp-size": "data-parallel-size",
    "mem-fraction-static": "gpu-memory-utilization",
    "max-running-requests": "max-num-seqs",
}
_PARALLEL_FLAGS: dict[str, dict[str, str]] = {
    "sglang": {"tp": "tp-size", "pp": "pp-size", "dp": "dp-size", "ep": "ep-size",
               "moe_dense_tp": "moe-dense-tp-size"},
    "vllm": {"tp": "tensor-parallel-size", "pp": "pipeline-parallel-size",
             "dp": "data-parallel-size", "dcp": "decode-context-parallel-size",
             "enable_expert_parallel": "enable-expert-parallel"},
}
# Names under which each parallelism degree may appear in a parameter set (any engine).
AXIS_NAMES: dict[str, tuple[str, ...]] = {
    "tp": ("tp-size", "tp", "tensor-parallel-size"),
    "pp": ("pp-size", "pp", "pipeline-parallel-size"),
    "dp": ("dp-size", "dp", "data-parallel-size"),
}
_GEMM_OFF = {"auto", "bf16", "bfloat16", "none"}
_KV_OFF = {"auto"}


def engine_of(base_runtime: str, sim_engine: str | None = None) -> str | None:
    """sglang/vllm for "sglang", "vllm", OME presets like "sglang-llama-small", and "sim"."""
    if base_runtime == "sim":
        return sim_engine or "sglang"
    head = base_runtime.split("-", 1)[0]
    return head if head in ("sglang", "vllm") else None


def normalise_name(raw: str, engine: str) -> str:
    """Original-format parameter name -> engine flag name without dashes."""
    name = raw.lstrip("-")
    if name in _ALIASES:
        return _ALIASES[name][engine]
    return name.replace("_", "-")

