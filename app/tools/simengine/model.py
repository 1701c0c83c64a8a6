"""Analytical performance model of an LLM inference engine (pure functions, no I/O).

Why: the autotuner must be testable without GPUs. This model is deliberately simple but
keeps the trade-offs that tuning flags really make (tensor parallelism vs. communication,
memory fraction vs. KV capacity, chunked prefill vs. inter-token latency, CUDA graphs vs.
launch overhead), so strategies behave plausibly against it. It is NOT a faithful
predictor of real SGLang/vLLM performance; every number below is an approximation.

Units: bytes, seconds, FLOP/s. "GB" means 1e9 bytes.

Formulas (tp = tensor parallel, pp = pipeline parallel, W = weight bytes of the model):

* Weights: ``W = params * bytes_per_param`` (2 for bf16/fp16, 1 for fp8/int8, 0.5 for
  int4 methods such as awq/gptq).
* KV bytes per token (whole model): ``2 (K and V) * layers * kv_heads * head_dim *
  kv_dtype_bytes`` (kv_dtype_bytes 2 for ``auto``, 1 for fp8 kinds). When tp exceeds the
  number of KV heads the heads are replicated, multiplying this by ``tp // kv_heads``.
* KV capacity of one data-parallel replica, in tokens:
  ``(mem_fraction * HBM * tp * pp - W) / kv_bytes_per_token``. ``<= 0`` fails start-up
  ("Not enough memory"); ``mem_fraction > 0.95`` fails with CUDA out of memory (the
  activations and CUDA graphs no longer fit); ``W / (tp*pp) > HBM`` fails the same way.
* One continuous-batching iteration with ``P`` prefill tokens, ``B`` decoding sequences
  and ``C`` context tokens of KV cache read by the decoders (roofline: the slower of
  memory and compute, plus communication and fixed overhead)::

      t_mem     = (W / tp + C * kv_bytes_per_token / tp) / (bandwidth * MEM_EFFICIENCY)
      t_compute = 2 * params * (P + B) / (tp * flops * COMPUTE_EFFICIENCY)
      t_comm    = 2 * layers * (tp - 1) / tp * (ALLREDUCE_LATENCY + (P + B) * hidden * 2
                  / link_bandwidth)  +  (pp - 1) * P2P_LATENCY
      t_over    = STEP_OVERHEAD + (layers * EAGER_LAUNCH_PER_LAYER if no CUDA graph)
      t         = max(t_mem, t_compute) + t_comm + t_over

  A pure decode step (P = 0) is memory bound at small batch, so more tp makes each token
  faster until the all-reduce latency dominates; a pure prefill step is the spec's
  ``2 * params * P / (tp * flops * efficiency)``. CUDA graphs apply to decode-only steps
  with ``B <= cuda_graph_max_bs`` (SGLang) or to steps with ``P + B <= cuda_graph_max_bs``
  tokens (vLLM's piecewise graphs).
* Start-up time (simulated): ``5 s + 1 s per 10 GB of weights per GPU +
  0.005 s * cuda_graph_max_bs`` (graph capture).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

MEM_EFFICIENCY = 0.85  # fraction of peak HBM bandwidth a decode step achieves
COMPUTE_EFFICIENCY = 0.55  # fraction of peak dense FLOP/s a prefill achieves
ALLREDUCE_LATENCY = 8e-6  # s, one NVLink all-reduce of a small tensor
P2P_LATENCY = 50e-6  # s, one pipeline-stage hand-off
STEP_OVERHEAD = 0.5e-3  # s, scheduler + sampling + Python per iteration
EAGER_LAUNCH_PER_LAYER = 40e-6  # s, kernel launches per layer without CUDA graphs
POLICY_COST_PER_WAITING = 2e-6  # s, lpm / dfs-weight sorting cost per waiting request
POLICY_SORT_LIMIT = 128  # SGLang falls back to fcfs above this many waiting requests
MAX_MEM_FRACTION = 0.95


class StartupError(Exception):
    """The engine cannot start with these settings; the message mimics the real engine."""


@dataclass(frozen=True)
class ModelSpec:
    """Architecture numbers the model needs (Llama-style decoder, GQA)."""

    name: str
    params: float
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    max_context: int


@dataclass(frozen=True)
class GpuHardware:
    """Per-GPU hardware numbers; fp8 FLOP/s are None where the GPU has no fp8 tensor cores."""

    name: str
    hbm_gb: float
    bandwidth_tbs: float
    bf16_tflops: float
    fp8_tflops: float | None
    link_gbs: float  # NVLink all-reduce bandwidth per GPU


MODEL_PRESETS: dict[str, ModelSpec] = {
    "llama-3-8b": ModelSpec("llama-3-8b", 8.03e9, 32, 4096, 32, 8, 128, 8192),
    "llama-3-70b": ModelSpec("llama-3-70b", 70.6e9, 80, 8192, 64, 8, 128, 8192),
    "llama-3.2-1b": ModelSpec("llama-3.2-1b", 1.24e9, 16, 2048, 32, 8, 64, 131072),
}

GPU_PRESETS: dict[str, GpuHardware] = {
    "A100-80GB": GpuHardware("A100-80GB", 80.0, 2.0, 312.0, None, 300.0),
    "H100-80GB": GpuHardware("H100-80GB", 80.0, 3.35, 989.0, 1979.0, 450.0),
    "H200": GpuHardware("H200", 141.0, 4.8, 989.0, 1979.0, 450.0),
}

# bytes per parameter by --quantization value (None = checkpoint dtype, bf16)
QUANT_BYTES: dict[str | None, float] = {
    None: 2.0, "fp8": 1.0, "w8a8_fp8": 1.0, "fbgemm_fp8": 1.0, "modelopt": 1.0,
    "w8a8_int8": 1.0, "awq": 0.5, "awq_marlin": 0.5, "gptq": 0.5, "gptq_marlin": 0.5,
    "marlin": 0.5, "bitsandbytes": 0.5,
}
FP8_COMPUTE_QUANT = {"fp8", "w8a8_fp8", "fbgemm_fp8", "modelopt"}
KV_DTYPE_BYTES: dict[str, float] = {
    "auto": 2.0, "bf16": 2.0, "bfloat16": 2.0, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0,
}


def resolve_model(preset: str | None, model_name: str) -> ModelSpec:
    """Explicit preset wins; else guess from the model string ("70b" / "8b" / "1b")."""
    if preset:
        if preset not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; choose from {sorted(MODEL_PRESETS)}")
        return MODEL_PRESETS[preset]
    low = model_name.lower()
    for token, key in (("70b", "llama-3-70b"), ("8b", "llama-3-8b"), ("1b", "llama-3.2-1b")):
        if token in low:
            return MODEL_PRESETS[key]
    return MODEL_PRESETS["llama-3-8b"]


@dataclass(frozen=True)
class EngineSettings:
    """Engine-neutral view of the tuning flags (after defaults were applied).

    ``max_running`` None means "derive from KV capacity"; ``prefill_budget`` None means no
    chunking (a whole prompt per iteration); for vLLM the budget also counts decode tokens.
    ``new_token_ratio`` is the fraction of each request's remaining output that admission
    reserves in KV (SGLang: 0.7 * schedule_conservativeness; vLLM: 0, allocate on demand).
    """

    engine: str = "sglang"
    tp: int = 1
    pp: int = 1
    dp: int = 1
    mem_fraction: float = 0.88
    max_running: int | None = None
    prefill_budget: int | None = 8192
    schedule_policy: str = "fcfs"
    new_token_ratio: float = 0.7
    cuda_graph_max_bs: int = 160
    kv_cache_dtype: str = "auto"
    quantization: str | None = None
    context_length: int | None = None
    chunked_prefill: bool = True


@dataclass(frozen=True)
class Capacity:
    """What start-up computes: memory split and limits of one data-parallel replica."""

    weight_bytes: float
    weight_bytes_per_gpu: float
    kv_bytes_per_token: float
    kv_tokens: int
    max_running: int
    max_context: int
    startup_seconds: float
    prefill_budget: int | None  # tokens per iteration (vLLM: incl. decodes); None = unchunked


def weight_bytes(model: ModelSpec, quantization: str | None) -> float:
    if quantization not in QUANT_BYTES:
        raise StartupError(f"ValueError: Unknown quantization method: {quantization}")
    return model.params * QUANT_BYTES[quantization]


def kv_bytes_per_token(model: ModelSpec, s: EngineSettings) -> float:
    if s.kv_cache_dtype not in KV_DTYPE_BYTES:
        raise StartupError(f"ValueError: Unsupported kv cache dtype: {s.kv_cache_dtype}")
    replication = max(1, s.tp // model.kv_heads)
    return 2 * model.layers * model.kv_heads * model.head_dim * KV_DTYPE_BYTES[s.kv_cache_dtype] * replication


def plan(model: ModelSpec, gpu: GpuHardware, s: EngineSettings) -> Capacity:
    """Check the settings like the real engine's start-up does and size the KV cache.

    Raises StartupError with an engine-like message when the engine would not start.
    """
    if s.tp < 1 or s.pp < 1 or s.dp < 1:
        raise StartupError("ValueError: parallel sizes must be >= 1")
    if model.heads % s.tp != 0:
        raise StartupError(
            f"ValueError: Total number of attention heads ({model.heads}) must be divisible "
            f"by tensor parallel size ({s.tp})."
        )
    if model.layers < s.pp:
        raise StartupError(f"ValueError: pipeline parallel size ({s.pp}) exceeds layers ({model.layers}).")
    hbm = gpu.hbm_gb * 1e9
    w = weight_bytes(model, s.quantization)
    w_gpu = w / (s.tp * s.pp)
    if s.mem_fraction > MAX_MEM_FRACTION or w_gpu > hbm:
        free = hbm * max(0.0, 1 - s.mem_fraction) / 2**30
        raise StartupError(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
            f"GPU 0 has a total capacity of {hbm / 2**30:.2f} GiB of which {free:.2f} GiB is free."
        )
    if s.mem_fraction <= 0:
        raise StartupError("ValueError: memory fraction must be > 0")
    kv_tok = kv_bytes_per_token(model, s)
    kv_tokens = int((s.mem_fraction * hbm * s.tp * s.pp - w) // kv_tok)
    if kv_tokens <= 0:
        if s.engine == "vllm":
            raise StartupError(
                "ValueError: No available memory for the cache blocks. Try increasing "
                "`gpu_memory_utilization` when initializing the engine."
            )
        raise StartupError("RuntimeError: Not enough memory. Please try to increase --mem-fraction-static.")
    max_context = min(model.max_context, s.context_length or model.max_context)
    if s.engine == "vllm" and kv_tokens < max_context:
        raise StartupError(
            f"ValueError: The model's max seq len ({max_context}) is larger than the maximum "
            f"number of tokens that can be stored in KV cache ({kv_tokens}). Try increasing "
            "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
        )
    budget = s.prefill_budget
    if s.engine == "vllm" and budget is None:
        budget = max(2048, max_context)
    if s.engine == "vllm" and not s.chunked_prefill and budget < max_context:
        raise StartupError(
            f"ValueError: max_num_batched_tokens ({budget}) is smaller than max_model_len "
            f"({max_context}). This effectively limits the maximum sequence length to "
            "max_num_batched_tokens and makes vLLM reject longer sequences. Please increase "
            "max_num_batched_tokens or decrease max_model_len."
        )
    if s.max_running is not None:
        if s.max_running < 1:
            raise StartupError("ValueError: max running requests must be >= 1")
        max_running = s.max_running
    else:  # SGLang's derivation: req pool size bounded to [2048, 4096], and by KV
        max_running = min(max(int(kv_tokens / max_context * 512), 2048), 4096)
    max_running = max(1, min(max_running, kv_tokens))
    startup = 5.0 + w_gpu / 10e9 + 0.005 * s.cuda_graph_max_bs
    return Capacity(w, w_gpu, kv_tok, kv_tokens, max_running, max_context, startup, budget)


def uses_cuda_graph(s: EngineSettings, prefill_tokens: int, decode_seqs: int) -> bool:
    if s.cuda_graph_max_bs <= 0:
        return False
    if s.engine == "vllm":
        return prefill_tokens + decode_seqs <= s.cuda_graph_max_bs
    return prefill_tokens == 0 and decode_seqs <= s.cuda_graph_max_bs


def iteration_time(
    model: ModelSpec,
    gpu: GpuHardware,
    s: EngineSettings,
    prefill_tokens: int,
    decode_seqs: int,
    context_tokens: int,
    waiting: int = 0,
) -> float:
    """Seconds one batched forward pass takes (see the module docstring for the formula).

    ``context_tokens`` is the KV read by the decoders (sum of their context lengths);
    ``waiting`` is the queue length, which only costs time for the sorting policies.
    """
    if prefill_tokens <= 0 and decode_seqs <= 0:
        return 0.0
    w = weight_bytes(model, s.quantization)
    kv_tok = kv_bytes_per_token(model, s)
    t_mem = (w / s.tp + context_tokens * kv_tok / s.tp) / (gpu.bandwidth_tbs * 1e12 * MEM_EFFICIENCY)
    flops = gpu.bf16_tflops
    if s.quantization in FP8_COMPUTE_QUANT and gpu.fp8_tflops:
        flops = gpu.fp8_tflops
    tokens = prefill_tokens + decode_seqs
    t_compute = 2 * model.params * tokens / (s.tp * flops * 1e12 * COMPUTE_EFFICIENCY)
    t_comm = 0.0
    if s.tp > 1:
        per_layer = ALLREDUCE_LATENCY + tokens * model.hidden * 2 / (gpu.link_gbs * 1e9)
        t_comm += 2 * model.layers * (s.tp - 1) / s.tp * per_layer
    t_comm += (s.pp - 1) * P2P_LATENCY
    t_over = STEP_OVERHEAD
    if not uses_cuda_graph(s, prefill_tokens, decode_seqs):
        t_over += model.layers * EAGER_LAUNCH_PER_LAYER
    return max(t_mem, t_compute) + t_comm + t_over + policy_overhead(s.schedule_policy, waiting)


def decode_time_per_token(model: ModelSpec, gpu: GpuHardware, s: EngineSettings, batch: int, context: int) -> float:
    """Decode step time for ``batch`` sequences of ``context`` tokens each (for tests/docs)."""
    return iteration_time(model, gpu, s, 0, batch, batch * context)


def prefill_time(model: ModelSpec, gpu: GpuHardware, s: EngineSettings, tokens: int) -> float:
    """Time of a prefill-only iteration of ``tokens`` prompt tokens."""
    return iteration_time(model, gpu, s, tokens, 0, 0)


def policy_overhead(policy: str, waiting: int) -> float:
    """lpm and dfs-weight sort the queue by prefix match each step (no cache is simulated,
    so they order like fcfs); above POLICY_SORT_LIMIT waiting requests SGLang skips the sort."""
    if policy in ("lpm", "dfs-weight") and waiting <= POLICY_SORT_LIMIT:
        return POLICY_COST_PER_WAITING * waiting
    return 0.0


def prompt_tokens_for_text(text: str) -> int:
    """Documented approximation used everywhere in the sim: ceil(characters / 4)."""
    return math.ceil(len(text) / 4)
