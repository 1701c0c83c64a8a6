"""Properties of the simulated engine's performance model (pure functions, no server)."""
import pytest

from app.tools.simengine.flags import parse_args
from app.tools.simengine.model import (GPU_PRESETS, MODEL_PRESETS, EngineSettings, StartupError,
                                     decode_time_per_token, iteration_time, plan, prefill_time,
                                     resolve_model)

pytestmark = pytest.mark.unit

M8 = MODEL_PRESETS["llama-3-8b"]
M70 = MODEL_PRESETS["llama-3-70b"]
H100 = GPU_PRESETS["H100-80GB"]


@pytest.mark.parametrize("batch", [1, 32, 128])
def test_more_tp_decodes_faster_at_equal_batch(batch: int) -> None:
    times = [decode_time_per_token(M8, H100, EngineSettings(tp=tp), batch, 1000) for tp in (1, 2, 4, 8)]
    assert times == sorted(times, reverse=True) and len(set(times)) == 4


def test_tp_has_diminishing_returns_from_all_reduce() -> None:
    t = {tp: decode_time_per_token(M8, H100, EngineSettings(tp=tp), 1, 100) for tp in (1, 2, 4, 8)}
    assert t[1] / t[2] > t[4] / t[8]  # speed-up shrinks as communication grows


def test_lower_mem_fraction_gives_fewer_kv_tokens() -> None:
    kv = [plan(M8, H100, EngineSettings(mem_fraction=f)).kv_tokens for f in (0.5, 0.7, 0.88)]
    assert kv[0] < kv[1] < kv[2]
    # formula: (f * HBM * tp - W) / kv bytes per token
    expected = int((0.88 * 80e9 - 8.03e9 * 2) // (2 * 32 * 8 * 128 * 2))
    assert kv[2] == expected


def test_fp8_kv_cache_and_quantization_add_capacity() -> None:
    base = plan(M8, H100, EngineSettings()).kv_tokens
    assert plan(M8, H100, EngineSettings(kv_cache_dtype="fp8")).kv_tokens == pytest.approx(2 * base, rel=1e-6)
    assert plan(M8, H100, EngineSettings(quantization="fp8")).kv_tokens > base


def test_too_low_mem_fraction_fails_start_up() -> None:
    with pytest.raises(StartupError, match="Not enough memory. Please try to increase --mem-fraction-static"):
        plan(M8, H100, EngineSettings(mem_fraction=0.15))
    with pytest.raises(StartupError, match="No available memory for the cache blocks"):
        plan(M8, H100, EngineSettings(engine="vllm", mem_fraction=0.15, prefill_budget=2048))


def test_too_high_mem_fraction_and_oversized_weights_are_cuda_oom() -> None:
    with pytest.raises(StartupError, match="CUDA out of memory"):
        plan(M8, H100, EngineSettings(mem_fraction=0.96))
    with pytest.raises(StartupError, match="CUDA out of memory"):
        plan(M70, H100, EngineSettings(tp=1))
    assert plan(M70, H100, EngineSettings(tp=4)).kv_tokens > 0


@pytest.mark.parametrize("tp", [3, 5, 6, 7])
def test_tp_not_dividing_heads_is_refused(tp: int) -> None:
    with pytest.raises(StartupError, match="divisible by tensor parallel size"):
        plan(M8, H100, EngineSettings(tp=tp))


def test_vllm_refuses_kv_smaller_than_max_model_len() -> None:
    with pytest.raises(StartupError, match="max seq len"):
        plan(M70, H100, EngineSettings(engine="vllm", tp=2, mem_fraction=0.89, prefill_budget=2048))


def test_prefill_is_compute_bound_and_scales_with_tokens_and_tp() -> None:
    s1, s2 = EngineSettings(tp=1), EngineSettings(tp=2)
    assert prefill_time(M8, H100, s1, 8192) > 3 * prefill_time(M8, H100, s1, 2048)
    assert prefill_time(M8, H100, s2, 8192) < prefill_time(M8, H100, s1, 8192)
    expected = 2 * M8.params * 8192 / (989e12 * 0.55)
    assert prefill_time(M8, H100, s1, 8192) == pytest.approx(expected, rel=0.05)


def test_cuda_graph_limit_adds_launch_overhead() -> None:
    s = EngineSettings(cuda_graph_max_bs=16)
    inside = iteration_time(M8, H100, s, 0, 16, 16 * 10)
    outside = iteration_time(M8, H100, s, 0, 17, 17 * 10)
    assert outside - inside > 1e-3  # eager launches cost more than one more sequence


def test_bigger_gpus_are_faster() -> None:
    s = EngineSettings()
    a100, h200 = GPU_PRESETS["A100-80GB"], GPU_PRESETS["H200"]
    assert decode_time_per_token(M8, a100, s, 8, 500) > decode_time_per_token(M8, H100, s, 8, 500) \
        > decode_time_per_token(M8, h200, s, 8, 500)
    assert plan(M8, h200, s).kv_tokens > plan(M8, H100, s).kv_tokens


def test_model_preset_inference() -> None:
    assert resolve_model(None, "meta-llama/Meta-Llama-3-70B-Instruct").name == "llama-3-70b"
    assert resolve_model(None, "meta-llama/Llama-3.1-8B").name == "llama-3-8b"
    assert resolve_model(None, "meta-llama/Llama-3.2-1B").name == "llama-3.2-1b"
    assert resolve_model("llama-3-70b", "tiny-1b").name == "llama-3-70b"


def test_flag_parsing_maps_both_engines() -> None:
    cfg = parse_args(["--engine", "sglang", "--model", "m", "--tp", "2", "--mem-fraction-static", "0.8",
                      "--chunked-prefill-size", "-1", "--schedule-conservativeness", "0.5"])
    s = cfg.settings
    assert (s.engine, s.tp, s.mem_fraction, s.prefill_budget, s.new_token_ratio) == ("sglang", 2, 0.8, None, 0.35)
    assert cfg.num_gpus == 2
    cfg = parse_args(["--engine", "vllm", "--model", "m", "-tp", "2", "--data-parallel-size", "2",
                      "--max-num-seqs", "64", "--no-enable-chunked-prefill", "--num-gpus", "8"])
    s = cfg.settings
    assert (s.tp, s.dp, s.max_running, s.chunked_prefill, s.mem_fraction) == (2, 2, 64, False, 0.9)
    assert plan(M8, H100, s).prefill_budget == 8192  # unchunked: budget covers max_model_len


def test_flag_errors_exit_like_argparse() -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--engine", "vllm", "--model", "m", "--tp-size", "2"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        parse_args(["--engine", "sglang", "--model", "m", "--tp", "4", "--num-gpus", "2"])
    assert exc.value.code == 1
