"""Benchmark client: genai-bench scenarios, a closed-loop streaming load generator and
vllm-bench-serve-style metrics. ``run_benchmark`` is the entry point for experiment jobs."""
from .client import run_benchmark, run_level, send_request
from .metrics import RequestRecord, error_kind, percentile, summarize
from .scenarios import Scenario, make_prompt, parse_scenario

__all__ = [
    "RequestRecord", "Scenario", "error_kind", "make_prompt", "parse_scenario", "percentile",
    "run_benchmark", "run_level", "send_request", "summarize",
]
