"""Known constraints between an engine's flags: the engine's own argument checks, as data.

Why: a configuration the engine refuses by its own rules (vLLM's "max_num_batched_tokens must
be greater than or equal to max_num_seqs") costs a GPU slot, an engine start and a failed
experiment to learn what the engine's source already says. The search checks these rules
before it suggests a point (app.domain.strategies), so no GPU is spent on such a point.

Each rule is copied from the engine release the vocabulary was taken from (see `source`) and
only judges flags whose values are known: a flag the task does not set takes the engine's
default when that default is a constant (`DEFAULTS`), and a rule that needs a flag with no
known value (vLLM's max-model-len defaults to the model's own length) does not judge. So a
rule can miss a refusal but never refuses a configuration the engine accepts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class FlagRule:
    """One argument check: `problem(values)` says why the engine refuses, or None. It is
    asked only when every flag in `needs` has a known value."""

    name: str
    needs: tuple[str, ...]
    problem: Callable[[Mapping[str, Any]], str | None]
    source: str  # where the engine checks it

    def check(self, values: Mapping[str, Any]) -> str | None:
        if any(values.get(flag) is None for flag in self.needs):
            return None
        return self.problem(values)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _at_least(big: str, small: str, message: str) -> Callable[[Mapping[str, Any]], str | None]:
    def problem(v: Mapping[str, Any]) -> str | None:
        a, b = _number(v[big]), _number(v[small])
        if a is None or b is None or a >= b:
            return None
        return message.format(big=v[big], small=v[small])
    return problem


def _batched_covers_model_len(v: Mapping[str, Any]) -> str | None:
    if v["enable-chunked-prefill"] is not False:
        return None
    return _at_least("max-num-batched-tokens", "max-model-len",
                     "max_num_batched_tokens ({big}) is smaller than max_model_len ({small}) without chunked "
                     "prefill: vLLM refuses it (--enable-chunked-prefill or a larger budget)")(v)


def _partial_prefills_need_chunking(v: Mapping[str, Any]) -> str | None:
    partial = _number(v["max-num-partial-prefills"])
    if partial is not None and partial > 1 and v["enable-chunked-prefill"] is False:
        return "max_num_partial_prefills > 1 needs chunked prefill: vLLM refuses it without --enable-chunked-prefill"
    return None


def _fraction(flag: str) -> Callable[[Mapping[str, Any]], str | None]:
    def problem(v: Mapping[str, Any]) -> str | None:
        value = _number(v[flag])
        if value is None or 0 < value <= 1:
            return None
        return f"--{flag} {v[flag]} is not a fraction in (0, 1]"
    return problem


def _divides(flag: str, by: str) -> Callable[[Mapping[str, Any]], str | None]:
    def problem(v: Mapping[str, Any]) -> str | None:
        a, b = _number(v[flag]), _number(v[by])
        if a is None or b is None or a <= 0 or b <= 0 or a % b == 0:
            return None
        return f"--{flag} {v[flag]} is not divisible by --{by} {v[by]}"
    return problem


def _dp_attention_divides_tp(v: Mapping[str, Any]) -> str | None:
    if v["enable-dp-attention"] is not True:
        return None
    return _divides("tp-size", "dp-size")(v)


_VLLM_SCHEDULER = "vllm/config/scheduler.py SchedulerConfig.verify_max_model_len (vLLM 0.11)"
VLLM_RULES: tuple[FlagRule, ...] = (
    FlagRule("batched tokens >= max-num-seqs", ("max-num-batched-tokens", "max-num-seqs"),
             _at_least("max-num-batched-tokens", "max-num-seqs",
                       "max_num_batched_tokens ({big}) must be greater than or equal to max_num_seqs ({small})"),
             _VLLM_SCHEDULER),
    FlagRule("without chunked prefill, batched tokens >= max-model-len",
             ("max-num-batched-tokens", "max-model-len", "enable-chunked-prefill"), _batched_covers_model_len,
             _VLLM_SCHEDULER),
    FlagRule("partial prefills need chunked prefill", ("max-num-partial-prefills", "enable-chunked-prefill"),
             _partial_prefills_need_chunking, _VLLM_SCHEDULER),
    FlagRule("long partial prefills <= partial prefills", ("max-long-partial-prefills", "max-num-partial-prefills"),
             _at_least("max-num-partial-prefills", "max-long-partial-prefills",
                       "max_long_partial_prefills ({small}) must be less than or equal to "
                       "max_num_partial_prefills ({big})"),
             _VLLM_SCHEDULER),
    FlagRule("gpu-memory-utilization is a fraction", ("gpu-memory-utilization",),
             _fraction("gpu-memory-utilization"), "vllm/config/cache.py CacheConfig (gt=0, le=1)"),
)

_SGLANG_ARGS = "python/sglang/srt/server_args.py ServerArgs (SGLang 0.5.3)"
SGLANG_RULES: tuple[FlagRule, ...] = (
    FlagRule("chunked-prefill-size divisible by page-size", ("chunked-prefill-size", "page-size"),
             lambda v: None if (_number(v["chunked-prefill-size"]) or 0) <= 0
             else _divides("chunked-prefill-size", "page-size")(v), _SGLANG_ARGS + " check_server_args"),
    FlagRule("with DP attention, dp-size divides tp-size", ("enable-dp-attention", "tp-size", "dp-size"),
             _dp_attention_divides_tp, _SGLANG_ARGS + " _handle_data_parallelism"),
)

# Engine defaults the rules may assume when a task leaves the flag out (constants in the
# release's own argument definitions; flags whose default depends on the model or the
# hardware are absent, so rules needing them do not judge).
DEFAULTS: dict[str, dict[str, Any]] = {
    "vllm": {"enable-chunked-prefill": True, "max-num-partial-prefills": 1, "max-long-partial-prefills": 1},
    "sglang": {"page-size": 1, "tp-size": 1, "dp-size": 1, "enable-dp-attention": False},
}
RULES: dict[str, tuple[FlagRule, ...]] = {"vllm": VLLM_RULES, "sglang": SGLANG_RULES}


def refusal(rules: tuple[FlagRule, ...], defaults: Mapping[str, Any], params: Mapping[str, Any]) -> str | None:
    """Why the engine would refuse `params` (canonical flag names), or None."""
    values = {**defaults, **{k: v for k, v in params.items() if v is not None}}
    for rule in rules:
        problem = rule.check(values)
        if problem:
            return problem
    return None
