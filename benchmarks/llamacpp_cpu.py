"""How much a tuned llama-server configuration gains on this host's CPU, with repeats.

`autotuner run --cpu examples/llamacpp-cpu.json` measures each configuration once, on a
machine whose load the tuner does not control; one measurement cannot tell an advantage
from noise. This measures the configurations named on the command line (each a
`name=flag:value,...` list of llama-server flags) against the same traffic as the example
(closed loop, D(128,64), 8 users, 96 requests per measurement), `--repeats` times each,
interleaved (A B C, A B C, ...) so that a change in the machine's load hits every
configuration alike, a fresh llama-server per measurement, and prints per configuration the
median, minimum and maximum output throughput and each median's ratio to the first's.

    python benchmarks/llamacpp_cpu.py [--repeats 5] [--json] \
        'defaults=ctx-size:8192' 'tuned=parallel:8,batch-size:128,ubatch-size:512,threads:1,ctx-size:8192'

Needs the cached build (`autotuner llamacpp build`); the model is the project's tiny one.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.processes import free_port  # noqa: E402
from app.tools.llamacpp.build import cached_server, server_path  # noqa: E402
from app.tools.llamacpp.model import write_model  # noqa: E402
from app.tools.loadgen import Target, run_benchmark  # noqa: E402

SCENARIO, CONCURRENCY, REQUESTS = "D(128,64)", 8, 96


def parse_config(text: str) -> tuple[str, list[str]]:
    name, _, flags = text.partition("=")
    argv: list[str] = []
    for item in filter(None, flags.split(",")):
        flag, _, value = item.partition(":")
        argv += [f"--{flag}", value] if value else [f"--{flag}"]
    return name, argv


def measure(binary: Path, model: Path, flags: list[str]) -> float:
    """Output tokens/s of one level against a fresh llama-server with `flags`."""
    port = free_port()
    proc = subprocess.Popen([str(binary), "--model", str(model), "--host", "127.0.0.1", "--port", str(port), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"llama-server {' '.join(flags)} did not start")
            time.sleep(0.05)
        (level,) = run_benchmark(Target(base, "tiny", SCENARIO, max_requests=REQUESTS, request_timeout_s=300),
                                 [CONCURRENCY])
        if level["errors"]:
            raise SystemExit(f"{level['errors']} requests failed with {' '.join(flags)}: {level['error_kinds']}")
        return level["output_throughput"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help="name=flag:value,... (the first is the baseline)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    binary = cached_server()
    if binary is None:
        raise SystemExit(f"llama-server is not built ({server_path()}): run `autotuner llamacpp build`")
    configs = [parse_config(c) for c in args.configs]
    runs: dict[str, list[float]] = {name: [] for name, _ in configs}
    with tempfile.TemporaryDirectory() as tmp:
        model = write_model(Path(tmp) / "tiny-llama.gguf")
        for _ in range(args.repeats):
            for name, flags in configs:
                runs[name].append(measure(binary, model, flags))
    base = statistics.median(runs[configs[0][0]])
    table = {name: {"flags": flags, "runs": runs[name], "median": statistics.median(runs[name]),
                    "min": min(runs[name]), "max": max(runs[name]),
                    "ratio_to_first": statistics.median(runs[name]) / base} for name, flags in configs}
    if args.json:
        print(json.dumps(table, indent=1))
    else:
        print(f"{SCENARIO}, {CONCURRENCY} users, {REQUESTS} requests, {args.repeats} repeats: output tokens/s")
        for name, row in table.items():
            print(f"{name:>12}: median {row['median']:7.1f}  min {row['min']:7.1f}  max {row['max']:7.1f}  "
                  f"x{row['ratio_to_first']:.2f}  ({' '.join(row['flags'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
