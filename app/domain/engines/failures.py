"""Why an experiment failed, as one of a few kinds a person and a strategy can act on.

An engine that cannot start with a parameter set (out of memory, KV cache too small, a flag
value it rejects) says nothing about the objective, but a lot about the search space: that
region is infeasible, and the Bayesian strategy should steer away from it instead of trying
its neighbours. A crash mid-benchmark or an image that cannot be pulled is not the
configuration's fault and must not teach the strategy anything. The kind is read from the
engine's exit status and the tail of its log, with the messages SGLang, vLLM, llama.cpp,
PyTorch and NCCL print (our simulated engine prints the same ones).
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class FailureKind:
    name: str
    label: str
    infeasible: bool  # the parameter set cannot run: strategies treat it as infeasible


# An attempt whose time limit ran out after a wait for host CPU (workers.sim_admission): the limit
# counts from the claim, so the host took part of it; the store runs the experiment again, and
# fails it with this kind only when the host stayed too busy (app.store.lifecycle).
HOST_BUSY = "host_busy"

FAILURE_KINDS: dict[str, FailureKind] = {k.name: k for k in (
    FailureKind("oom", "out of memory at start-up", True),
    FailureKind("kv_cache", "KV cache too small", True),
    FailureKind("invalid_argument", "invalid argument", True),
    FailureKind("nccl", "NCCL / communication error", True),
    FailureKind("startup_timeout", "start-up timeout", True),
    FailureKind("image_pull", "image not available", False),
    FailureKind("engine_exited", "engine exited during start-up", False),
    FailureKind("engine_died", "engine died during benchmark", False),
    FailureKind("bad_measurement", "benchmark errors above threshold", False),
    FailureKind("host_lag", "simulated engine fell behind its model (host too busy): figures unreliable", False),
    FailureKind(HOST_BUSY, "host too busy: its time limit ran out while it waited for host CPU", False),
    FailureKind("worker_lost", "worker lost", False),
    FailureKind("internal", "internal error", False),
)}

# Checked in order: the KV-cache messages mention memory too, so they come before OOM.
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("kv_cache", re.compile(
        r"No available memory for the cache blocks|stored in KV cache|KV cache is too small|"
        r"Insufficient memory for KV cache|Not enough memory\. Please try to increase --mem-fraction-static")),
    # llama.cpp: "ggml_aligned_malloc: insufficient memory", "failed to allocate CPU buffer of
    # size ...", "failed to allocate buffer for kv cache" (a context too large for memory).
    ("oom", re.compile(r"OutOfMemoryError|CUDA out of memory|CUDA error: out of memory|\bout of memory\b|"
                       r"insufficient memory|failed to allocate \w* ?buffer", re.I)),
    ("nccl", re.compile(r"NCCL error|nccl(Internal|System|UnhandledCuda|Invalid)\w*|NCCL WARN|ProcessGroupNCCL|"
                        r"DistBackendError")),
    # llama.cpp: "error: invalid argument: --x", "error while handling argument "--x": ...".
    ("invalid_argument", re.compile(r"unrecognized arguments|invalid choice|error: argument|"
                                    r"^\w*(ValueError|TypeError)\b|must be divisible by|"
                                    r"^error: invalid argument:|^error while handling argument", re.M)),
]


def classify_failure(log: str, exit_code: int | None = None) -> str:
    """The kind of a start-up failure from the engine's log tail and exit status."""
    for kind, pattern in _PATTERNS:
        if pattern.search(log or ""):
            return kind
    if exit_code == 2:  # argparse's exit status for a bad command line
        return "invalid_argument"
    return "engine_exited"


def measurement_failure(error_kinds: list[dict[str, int]]) -> str:
    """The kind of a benchmark whose levels failed too many requests (`error_kinds` of each
    level): requests longer than the engine's context per sequence (llama.cpp's --ctx-size
    divided by --parallel, vLLM's max-model-len) say the configuration cannot serve the
    traffic, like a KV cache too small; anything else is a bad measurement."""
    if any(kinds.get("context_exceeded") for kinds in error_kinds):
        return "kv_cache"
    return "bad_measurement"


def is_infeasible(kind: str | None) -> bool:
    return kind in FAILURE_KINDS and FAILURE_KINDS[kind].infeasible


def label(kind: str | None) -> str:
    return FAILURE_KINDS[kind].label if kind in FAILURE_KINDS else (kind or "")
