"""How accurately the benchmark client measures latency: its figures against the delays an
independent simulator, xpyd-sim, is configured to sleep.

xpyd-sim (``xpyd-sim serve``, non-scheduling mode) sleeps ``--prefill-delay-ms`` before it
starts the response and ``--decode-delay-per-token-ms`` before *each* streamed token,
including the first, so a client measuring like vllm bench serve should see

    TTFT ~= prefill + decode    TPOT ~= ITL ~= decode    E2EL ~= prefill + out * decode

For each (prefill, decode) pair and each API (completions, chat) this runs one closed-loop
level at concurrency 1 with ``app.tools.loadgen.run_benchmark`` and prints, per metric, the
expected value, the measured one and the error (ms and %). The error is the client's own
overhead plus the machine's: event-loop wake-ups, loopback HTTP, JSON, and whatever else
runs on the machine, so it is a figure to watch, not a pass/fail line (the tests check only
what holds on any machine: tests/test_client_vs_xpyd_sim.py). ``--limit-pct``/``--limit-ms``
mark the rows beyond ``pct % of expected + ms`` (20 % + 5 ms by default, the tolerance the
tests used to assert) with "!"; the exit status is 0 either way.

    python benchmarks/client_accuracy.py [--requests 5] [--output-tokens 20] [--json]
                                         [--pairs 50:10,120:4] [--repeats 1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.processes import free_port  # noqa: E402
from app.tools.loadgen import Target, run_benchmark  # noqa: E402

MODEL = "xpyd-test"
METRICS = ("mean_ttft_ms", "mean_tpot_ms", "median_itl_ms", "mean_e2el_ms")


def start_xpyd(prefill_ms: float, decode_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-c", "from xpyd_sim.cli import main; main()", "serve",
           "--host", "127.0.0.1", "--port", str(port), "--model", MODEL,
           "--prefill-delay-ms", str(prefill_ms), "--decode-delay-per-token-ms", str(decode_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit("xpyd-sim exited during start-up (is the xpyd-sim package installed?)")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, base
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("xpyd-sim not healthy after 60 s")
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def expected(prefill_ms: float, decode_ms: float, out: int) -> dict[str, float]:
    return {"mean_ttft_ms": prefill_ms + decode_ms, "mean_tpot_ms": decode_ms, "median_itl_ms": decode_ms,
            "mean_e2el_ms": prefill_ms + out * decode_ms}


def measure(pairs: list[tuple[float, float]], requests: int, out: int, repeats: int) -> list[dict]:
    rows = []
    for prefill_ms, decode_ms in pairs:
        proc, base = start_xpyd(prefill_ms, decode_ms)
        try:
            for api in ("completions", "chat"):
                for rep in range(repeats):
                    r = run_benchmark(Target(base, MODEL, f"D(100,{out})", max_requests=requests, max_time_s=120,
                                             api=api), [1])[0]
                    if r["completed"] != requests or r["errors"]:
                        raise SystemExit(f"xpyd-sim run failed: {r['error_kinds']}")
                    want = expected(prefill_ms, decode_ms, out)
                    rows.append({"prefill_ms": prefill_ms, "decode_ms": decode_ms, "api": api, "repeat": rep,
                                 "metrics": {m: {"expected": want[m], "measured": r[m],
                                                 "error_ms": r[m] - want[m],
                                                 "error_pct": 100.0 * (r[m] - want[m]) / want[m]}
                                             for m in METRICS}})
        finally:
            stop(proc)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="50:10,120:4", help="prefill_ms:decode_ms pairs, comma-separated")
    parser.add_argument("--requests", type=int, default=5, help="requests per level")
    parser.add_argument("--output-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--limit-pct", type=float, default=20.0)
    parser.add_argument("--limit-ms", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pairs = [tuple(float(x) for x in p.split(":")) for p in args.pairs.split(",")]
    rows = measure(pairs, args.requests, args.output_tokens, args.repeats)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"benchmark client vs xpyd-sim: concurrency 1, {args.requests} requests of D(100,{args.output_tokens}) "
          f"per level; '!' = error beyond {args.limit_pct:g} % + {args.limit_ms:g} ms")
    print(f"{'prefill/decode':>14} {'api':>11} {'metric':>14} {'expected':>9} {'measured':>9} {'err ms':>8} {'err %':>7}")
    worst = 0.0
    for row in rows:
        for m, v in row["metrics"].items():
            over = abs(v["error_ms"]) > args.limit_pct / 100 * v["expected"] + args.limit_ms
            worst = max(worst, abs(v["error_pct"]))
            print(f"{row['prefill_ms']:>7g}/{row['decode_ms']:<6g} {row['api']:>11} {m:>14} {v['expected']:>9.1f} "
                  f"{v['measured']:>9.1f} {v['error_ms']:>+8.2f} {v['error_pct']:>+6.1f}%{' !' if over else ''}")
    print(f"largest error: {worst:.1f} %")


if __name__ == "__main__":
    main()
