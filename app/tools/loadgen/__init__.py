"""Benchmark client: genai-bench scenarios, closed-loop (concurrency) and open-loop
(request-rate) streaming load generators and vllm-bench-serve-style metrics, goodput
included. ``run_benchmark`` is the entry point for experiment jobs."""
from .arrivals import arrival_offsets, arrival_times
from .client import run_benchmark, run_level, send_request
from .level import Target
from .metrics import RequestRecord, check_slo, error_kind, meets_slo, percentile, summarize
from .openloop import run_rate_level
from .scenarios import Scenario, make_prompt, parse_scenario

__all__ = [
    "RequestRecord", "Scenario", "Target", "arrival_offsets", "arrival_times", "check_slo", "error_kind",
    "make_prompt", "meets_slo", "parse_scenario", "percentile", "run_benchmark", "run_level",
    "run_rate_level", "send_request", "summarize",
]
